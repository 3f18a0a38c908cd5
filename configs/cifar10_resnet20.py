r"""CIFAR-10, ResNet-20, CafeNet width search at 50% of the MACs: the paper's CIFAR-10 setting.

    python -m cafe_tf.pipeline --config configs/cifar10_resnet20.py --workdir runs/c10_r20 \
        --config.data.data_dir=~/tensorflow_datasets

Needs CIFAR-10 prepared in the data_dir (add --config.data.download=True once, with network access).
Full network: 40,813,184 MACs (the published ~41 M), 274,042 params
(cafe_tf.flops, 32x32x3, 10 classes); budget 50% = 20,406,592 MACs
(search.macs_ratio = 0.5: our choice of ResNet-20 budget, as for ResNet-56).

Stages (the paper's own hyper-parameters are unavailable, so the recipe is the standard CIFAR
one, our choice):

* supernet: min-min training (locally free sharing, r = 1 channel (zone_unit), K = 2 candidates, FLOPs-sensitive
  bins, no sandwich; candidates compared with the batch's own BN statistics), as long as the plain
  model's recipe: SGD 0.1 / momentum 0.9 / wd 5e-4 / cosine, 200 epochs, batch 128, pad-4 crop + flip.
* search: evolution with the library's default settings, population 50, 20 generations, top-10 parents,
  mutation probability 0.1 per group, crossover for half the children, candidates kept in
  [0.8, 1] x budget; each scored as the best of K = 2 arrangements after BN recalibration on 256
  training images, on the whole validation split (the last 5,000 training images; never test).
* train (the retraining of the searched widths, the paper's protocol: from scratch): the same
  CIFAR recipe, 200 epochs. `--config.search.method=greedy` gives the AutoSlim baseline,
  `--config.supernet.sharing=fixed` the fixed-pattern supernet.
"""

from cafe_tf import config as cfg
from cafe_tf.pipeline import deploy_section, retrain_section
from cafe_tf.search.run import search_section
from cafe_tf.training.supernet import supernet_section


def get_config():
    c = cfg.base_config()
    c.data.name = "cifar10"
    c.data.batch_size = 128
    c.data.eval_batch_size = 500  # larger eval batches: the search scores many widths on validation
    c.data.augment = "crop_flip"
    c.data.cache = True  # 150 MB of uint8 images
    c.model.name = "resnet20"

    # One recipe for the supernet and for retraining the searched network (and baselines such as
    # uniform width scaling).
    recipe = dict(epochs=200, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                  schedule="cosine", log_every=100)
    c.train.update(recipe)
    c.supernet = supernet_section()  # defaults: locally free, r = 1, K = 2, FLOPs-sensitive bins
    c.supernet.update(recipe)
    c.supernet.checkpoint_every = 1000

    c.search = search_section()  # the library's evolution defaults
    c.search.macs_ratio = 0.5  # our choice of ResNet-20 budget, as for ResNet-56

    c.retrain = retrain_section()
    c.deploy = deploy_section()
    return cfg.lock(c)
