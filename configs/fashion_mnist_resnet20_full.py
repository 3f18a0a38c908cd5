r"""Fashion-MNIST, ResNet-20, CafeNet at 50% of the MACs: the full-length version of the offline default.

    python -m cafe_tf.pipeline --config configs/fashion_mnist_resnet20_full.py --workdir runs/fm_r20_full

The same data, model, search space and budget as configs/fashion_mnist_resnet20.py (it loads that
file's get_config and changes only the lengths; hours on CPU, minutes on a GPU):

* supernet: the full CIFAR recipe, 200 epochs (SGD 0.1 / momentum 0.9 / wd 5e-4 / cosine, as the
  default); its end-of-training report scores each width on the whole validation split.
* search: the library's default evolution settings, population 50, 20 generations, top-10 parents (the
  default's 16 / 6 / 4 were cut for time), each candidate scored on the whole validation split
  (the last 5,000 training images; never test).
* train (the searched widths retrained from scratch): 200 epochs.
"""

from cafe_tf.config import sibling_config


def get_config():
    c = sibling_config(__file__, "fashion_mnist_resnet20.py")  # locked: only existing keys can change
    c.supernet.epochs = 200
    c.supernet.checkpoint_every = 1000
    c.supernet.eval_examples = 0
    c.search.population = 50
    c.search.generations = 20
    c.search.parents = 10
    c.search.eval_examples = 0
    c.train.epochs = 200
    c.train.eval_every = 10  # the demo evaluates after its last epoch only
    return c
