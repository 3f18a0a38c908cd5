r"""CelebA, MobileNetV2 at 128x128, CafeNet width search at 50% of the MACs (our CelebA setting).

    python -m cafe_tf.pipeline --config configs/celeba_mobilenet_v2.py --workdir runs/celeba_mbv2 \
        --config.data.data_dir=~/tensorflow_datasets

The spec lists CelebA among the paper's experiments but gives no task, model, budget or recipe,
so all of this is our choice. Task: the "Smiling" attribute as a 2-class problem (a balanced
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

* supernet: min-min training (locally free sharing, r = 1 bin, K = 2 candidates, FLOPs-sensitive
  bins, no sandwich), 30 epochs, batch 256, SGD 0.1 / momentum 0.9 (Nesterov) with 1 warm-up
  epoch, cosine, weight decay 4e-5 (MobileNetV2's).
* search: evolution with the spec's settings (population 50, 20 generations, top-10 parents,
  mutation 0.1 per group), each candidate the best of K = 2 arrangements after BN recalibration
  on 256 training images, on the whole validation split.
* train (the searched widths retrained from scratch): the same recipe, 30 epochs.
"""

from cafe_tf import config as cfg
from cafe_tf.search.run import search_section
from cafe_tf.train.supernet import supernet_section

import ml_collections


def get_config():
    c = cfg.base_config()
    c.data.name = "celeb_a"
    c.data.attribute = "Smiling"  # "" = all 40 attributes (multi-label); see the docstring
    c.data.image_size = 128
    c.data.batch_size = 256
    c.data.eval_batch_size = 500
    c.data.augment = "flip"
    c.model.name = "mobilenet_v2"

    # Retraining recipe of the searched network (and of baselines such as uniform width scaling).
    c.train.epochs = 30
    c.train.optimizer = "sgd"
    c.train.lr = 0.1
    c.train.momentum = 0.9
    c.train.nesterov = True
    c.train.weight_decay = 4e-5
    c.train.warmup_epochs = 1.0
    c.train.schedule = "cosine"
    c.train.log_every = 100

    c.supernet = supernet_section()
    c.supernet.epochs = 30
    c.supernet.lr = 0.1
    c.supernet.momentum = 0.9
    c.supernet.nesterov = True
    c.supernet.weight_decay = 4e-5
    c.supernet.warmup_epochs = 1.0
    c.supernet.schedule = "cosine"
    c.supernet.log_every = 100
    c.supernet.checkpoint_every = 1000
    c.supernet.sharing = "locally_free"
    c.supernet.granularity = "flops_sensitive"
    c.supernet.r = 1
    c.supernet.num_candidates = 2
    c.supernet.sandwich = False
    c.supernet.selection_bn = "batch"
    c.supernet.eval_fractions = (1.0, 0.5)

    c.search = search_section()
    c.search.method = "evolution"
    c.search.macs_ratio = 0.5  # our choice: the spec gives no CelebA budget
    c.search.lower_ratio = 0.8
    c.search.population = 50
    c.search.generations = 20
    c.search.parents = 10
    c.search.mutation_prob = 0.1
    c.search.num_candidates = 2
    c.search.calibration_examples = 256
    c.search.eval_examples = 0  # the whole validation split

    c.retrain = ml_collections.ConfigDict(dict(
        init_from_supernet=False,  # False: from scratch (the paper's protocol); True: fine-tune from the supernet
    ))
    c.deploy = ml_collections.ConfigDict(dict(
        quantization="int8",
        representative_examples=200,
        benchmark_runs=50,
    ))
    return cfg.lock(c)
