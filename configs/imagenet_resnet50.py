r"""ImageNet, ResNet-50, CafeNet width search at 1G, 2G or 3G MACs (the paper's ImageNet setting).

The budget is the config string after the file name (ml_collections' `file:arg`; default 2g):

    python -m cafe_tf.pipeline --config configs/imagenet_resnet50.py:1g --workdir runs/in_r50_1g \
        --config.data.data_dir=/data/tensorflow_datasets
    python -m cafe_tf.pipeline --config configs/imagenet_resnet50.py:2g --workdir runs/in_r50_2g ...

The pipeline hands `file:arg` on to every stage. Any other budget: `--config.search.max_macs=N`.
One supernet serves every budget: train it once, then search with each budget in its own workdir
(`--config.search.supernet=runs/in_r50_2g/supernet.keras`). ImageNet must be prepared in the
data_dir by hand (see cafe_tf.data); the search's validation split is 10,000 images held out of
the training set, and "test" is the official validation set.

Full network: 4,089,184,256 MACs (the published 4.1 G), 25,610,152 params (cafe_tf.flops at
224x224x3, 1000 classes). Budgets (published figures): 1G (24% of the MACs; CafeNet
~75.3 top-1, AutoSlim 74.0), 2G (49%; CafeNet ~77.4, AutoSlim 75.6, MetaPruning 75.4), 3G (73%;
AutoSlim's third ResNet-50 point, no CafeNet figure published for it). The supernet is the network at
width 1.0, as AutoSlim searched ResNet-50 (our reading; the paper's text was unavailable).

Stages (the paper's hyper-parameters are unavailable; an ImageNet recipe on the 100-epoch
scale, our choices):

* supernet: min-min training (locally free sharing, r = 1 channel (zone_unit), K = 2 candidates, FLOPs-sensitive
  bins, no sandwich), 100 epochs, SGD momentum 0.9, lr 0.4 for batch 1024 (0.1 per 256) with 5
  warm-up epochs, cosine, weight decay 1e-4, label smoothing 0.1, inception crop + flip, bfloat16
  mixed precision, MirroredStrategy over the machine's GPUs.
* search: evolution with the library's default settings (population 50, 20 generations, top-10 parents,
  mutation 0.1 per group, candidates in [0.8, 1] x budget), each candidate the best of K = 2
  arrangements after BN recalibration on 256 training images, on the whole validation split.
* train (the searched widths retrained from scratch, the paper's protocol): the supernet's recipe,
  100 epochs.
"""

from cafe_tf import config as cfg
from cafe_tf.pipeline import deploy_section, retrain_section
from cafe_tf.search.run import search_section
from cafe_tf.training.supernet import supernet_section


# Config string -> search.max_macs (multiply-accumulates).
BUDGETS = {"1g": 1_000_000_000, "2g": 2_000_000_000, "3g": 3_000_000_000}


def get_config(budget: str = "2g"):
    if budget.lower() not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r} for imagenet_resnet50.py; valid: {sorted(BUDGETS)} "
                         "(or set --config.search.max_macs)")
    c = cfg.base_config()
    c.data.name = "imagenet2012"
    c.data.batch_size = 1024
    c.data.eval_batch_size = 1024
    c.data.augment = "inception"
    c.data.image_size = 224
    c.data.shuffle_buffer = 20_000
    c.model.name = "resnet50"
    c.distribute.strategy = "mirrored"

    # One recipe for the supernet and for retraining the searched network (and baselines such as
    # uniform width scaling).
    recipe = dict(epochs=100, optimizer="sgd", lr=0.4, momentum=0.9, nesterov=False, weight_decay=1e-4,
                  warmup_epochs=5.0, schedule="cosine", label_smoothing=0.1, mixed_precision="mixed_bfloat16",
                  log_every=200, checkpoint_every=2000)
    c.train.update(recipe)
    c.supernet = supernet_section()  # defaults: locally free, r = 1, K = 2, FLOPs-sensitive bins
    c.supernet.update(recipe)

    c.search = search_section()  # the library's evolution defaults
    c.search.max_macs = BUDGETS[budget.lower()]

    c.retrain = retrain_section()
    c.deploy = deploy_section()
    return cfg.lock(c)
