r"""ImageNet, MobileNetV2, CafeNet width search at 200M or 300M MACs (the paper's ImageNet setting).

The budget is the config string after the file name (ml_collections' `file:arg`; default 300m):

    python -m cafe_tf.pipeline --config configs/imagenet_mobilenet_v2.py:300m --workdir runs/in_mbv2_300m \
        --config.data.data_dir=/data/tensorflow_datasets
    python -m cafe_tf.pipeline --config configs/imagenet_mobilenet_v2.py:200m --workdir runs/in_mbv2_200m ...

The pipeline hands `file:arg` on to every stage. Any other budget (e.g. AutoSlim's 305M / 207M):
`--config.search.max_macs=N`. One supernet serves every budget: train it once, then search with
each budget in its own workdir (`--config.search.supernet=runs/in_mbv2_300m/supernet.keras`).
ImageNet must be prepared in the data_dir by hand (see cafe_tf.data).

MobileNetV2 1.0 is 300,774,272 MACs (the published 300 M), 3,538,984 params (cafe_tf.flops at
224x224x3, 1000 classes). The supernet is MobileNetV2 **1.5x** (672,832,704 MACs, 6,909,528
params), so the 300M budget redistributes width instead of returning the plain 1.0 net; this is
AutoSlim's protocol for MobileNetV2 as we recall it (our choice: the CafeNet text was unavailable;
`--config.model.width_mult=1.0` searches inside the plain net). Budgets (spec, "Results to compare
with"): 300M (CafeNet ~74.7-74.9 top-1 at ~305M, AutoSlim 74.2 at 305M) and 200M (CafeNet
~73.0-73.1, AutoSlim 73.0 at 207M); candidates are kept in [0.8, 1] x budget.

Stages (the paper's hyper-parameters are unavailable; the spec's "ImageNet: 100 epochs-scale
recipe", our choices):

* supernet: min-min training (locally free sharing, r = 1 bin, K = 2 candidates, FLOPs-sensitive
  bins, no sandwich), 100 epochs, SGD momentum 0.9 (Nesterov), lr 0.4 for batch 1024 with 5
  warm-up epochs, cosine, weight decay 4e-5 (MobileNetV2's), label smoothing 0.1, inception crop
  + flip, bfloat16 mixed precision, MirroredStrategy over the machine's GPUs.
* search: evolution with the spec's settings (population 50, 20 generations, top-10 parents,
  mutation 0.1 per group), each candidate the best of K = 2 arrangements after BN recalibration
  on 256 training images, on the whole validation split (10,000 held-out training images).
* train (the searched widths retrained from scratch, the paper's protocol): the same recipe for
  250 epochs (light nets are usually trained 250-300 epochs; ours).
"""

from cafe_tf import config as cfg
from cafe_tf.search.run import search_section
from cafe_tf.train.supernet import supernet_section

import ml_collections

# Config string -> search.max_macs (multiply-accumulates).
BUDGETS = {"200m": 200_000_000, "300m": 300_000_000}


def get_config(budget: str = "300m"):
    if budget.lower() not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r} for imagenet_mobilenet_v2.py; valid: {sorted(BUDGETS)} "
                         "(or set --config.search.max_macs)")
    c = cfg.base_config()
    c.data.name = "imagenet2012"
    c.data.batch_size = 1024
    c.data.eval_batch_size = 1024
    c.data.augment = "inception"
    c.data.image_size = 224
    c.data.shuffle_buffer = 20_000
    c.model.name = "mobilenet_v2"
    c.model.width_mult = 1.5  # the supernet; see the docstring
    c.distribute.strategy = "mirrored"

    # Retraining recipe of the searched network (and of baselines such as uniform width scaling).
    c.train.epochs = 250
    c.train.optimizer = "sgd"
    c.train.lr = 0.4
    c.train.momentum = 0.9
    c.train.nesterov = True
    c.train.weight_decay = 4e-5
    c.train.warmup_epochs = 5.0
    c.train.schedule = "cosine"
    c.train.label_smoothing = 0.1
    c.train.mixed_precision = "mixed_bfloat16"
    c.train.log_every = 200
    c.train.checkpoint_every = 2000

    c.supernet = supernet_section()
    c.supernet.epochs = 100
    c.supernet.lr = 0.4
    c.supernet.momentum = 0.9
    c.supernet.nesterov = True
    c.supernet.weight_decay = 4e-5
    c.supernet.warmup_epochs = 5.0
    c.supernet.schedule = "cosine"
    c.supernet.label_smoothing = 0.1
    c.supernet.mixed_precision = "mixed_bfloat16"
    c.supernet.log_every = 200
    c.supernet.checkpoint_every = 2000
    c.supernet.sharing = "locally_free"
    c.supernet.granularity = "flops_sensitive"
    c.supernet.r = 1
    c.supernet.num_candidates = 2
    c.supernet.sandwich = False
    c.supernet.selection_bn = "batch"
    c.supernet.eval_fractions = (1.0, 0.5)

    c.search = search_section()
    c.search.method = "evolution"
    c.search.max_macs = BUDGETS[budget.lower()]
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
