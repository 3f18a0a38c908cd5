r"""CelebA, MobileNetV2 at 128x128, CafeNet width search at 50% of the MACs (our CelebA setting).

    python -m cafe_tf.pipeline --config configs/celeba_mobilenet_v2.py --workdir runs/celeba_mbv2 \
        --config.data.data_dir=~/tensorflow_datasets

The CafeNet paper lists CelebA among its experiments; the task, model, budget and recipe here
are all our choice. Task: the "Smiling" attribute as a 2-class problem (a balanced
attribute, about 48% positive), on tfds' aligned 178x218 faces centre-cropped and resized to
128x128 (cafe_tf.data's CelebA default), flip augmentation. The 40-attribute multi-label task
(`--config.data.attribute=""`: 40 sigmoid outputs, sigmoid cross-entropy, scored by mean
per-attribute accuracy) is the other choice: the min-min supernet training, its validation scores,
the search's evaluator and the retraining all use that loss and that accuracy (the full network
then has 40 outputs: 97,845,248 MACs). Splits: CelebA's official train (162,770) / validation
(19,867, what the search scores on) / test (19,962). Needs CelebA prepared in the data_dir (add
--config.data.download=True once, with network access).

Full network: MobileNetV2 1.0, 97,796,608 MACs and 2,260,546 params at 128x128x3 with 2 classes
(cafe_tf.flops); budget 50% = 48,898,304 MACs (search.macs_ratio = 0.5), candidates kept in
[0.8, 1] x budget.

Stages (our choices):

* supernet: min-min training (locally free sharing, r = 1 channel (zone_unit), K = 2 candidates, FLOPs-sensitive
  bins, no sandwich), 30 epochs, batch 256, SGD 0.1 / momentum 0.9 (Nesterov) with 1 warm-up
  epoch, cosine, weight decay 4e-5 (MobileNetV2's).
* search: evolution with the library's default settings (population 50, 20 generations, top-10 parents,
  mutation 0.1 per group), each candidate the best of K = 2 arrangements after BN recalibration
  on 256 training images, on the whole validation split.
* train (the searched widths retrained from scratch): the same recipe, 30 epochs.
"""

from cafe_tf import config as cfg
from cafe_tf.pipeline import deploy_section, retrain_section
from cafe_tf.search.run import search_section
from cafe_tf.training.supernet import supernet_section


def get_config():
    c = cfg.base_config()
    c.data.name = "celeb_a"
    c.data.attribute = "Smiling"  # "" = all 40 attributes (multi-label); see the docstring
    c.data.image_size = 128
    c.data.batch_size = 256
    c.data.eval_batch_size = 500
    c.data.augment = "flip"
    c.model.name = "mobilenet_v2"

    # One recipe for the supernet and for retraining the searched network (and baselines such as
    # uniform width scaling).
    recipe = dict(epochs=30, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5,
                  warmup_epochs=1.0, schedule="cosine", log_every=100)
    c.train.update(recipe)
    c.supernet = supernet_section()  # defaults: locally free, r = 1, K = 2, FLOPs-sensitive bins
    c.supernet.update(recipe)
    c.supernet.checkpoint_every = 1000

    c.search = search_section()  # the library's evolution defaults
    c.search.macs_ratio = 0.5  # our choice of CelebA budget

    c.retrain = retrain_section()
    c.deploy = deploy_section()
    return cfg.lock(c)
