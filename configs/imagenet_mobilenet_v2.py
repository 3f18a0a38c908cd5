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
`--config.model.width_mult=1.0` searches inside the plain net). Budgets (published
figures): 300M (CafeNet ~74.7-74.9 top-1 at ~305M, AutoSlim 74.2 at 305M) and 200M (CafeNet
~73.0-73.1, AutoSlim 73.0 at 207M); candidates are kept in [0.8, 1] x budget.

Stages (the paper's hyper-parameters are unavailable; an ImageNet recipe on the 100-epoch
scale, our choices):

* supernet: min-min training (locally free sharing, r = 1 channel (zone_unit), K = 2 candidates, FLOPs-sensitive
  bins, no sandwich), 100 epochs, SGD momentum 0.9 (Nesterov), lr 0.4 for batch 1024 with 5
  warm-up epochs, cosine, weight decay 4e-5 (MobileNetV2's), label smoothing 0.1, inception crop
  + flip, bfloat16 mixed precision, MirroredStrategy over the machine's GPUs.
* search: evolution with the library's default settings (population 50, 20 generations, top-10 parents,
  mutation 0.1 per group), each candidate the best of K = 2 arrangements after BN recalibration
  on 256 training images, on the whole validation split (10,000 held-out training images).
* train (the searched widths retrained from scratch, the paper's protocol): the same recipe for
  250 epochs (light nets are usually trained 250-300 epochs; ours).
"""

from cafe_tf.config import sibling_config

# Config string -> search.max_macs (multiply-accumulates).
BUDGETS = {"200m": 200_000_000, "300m": 300_000_000}


def get_config(budget: str = "300m"):
    if budget.lower() not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r} for imagenet_mobilenet_v2.py; valid: {sorted(BUDGETS)} "
                         "(or set --config.search.max_macs)")
    # The ImageNet ResNet-50 recipe (data, min-min supernet, search, bf16, mirrored); MobileNetV2's
    # 1.5x supernet, Nesterov, weight decay 4e-5 and 250-epoch retraining.
    c = sibling_config(__file__, "imagenet_resnet50.py")
    c.model.name = "mobilenet_v2"
    c.model.width_mult = 1.5  # the supernet; see the docstring
    c.train.epochs = 250
    for section in (c.train, c.supernet):
        section.nesterov = True
        section.weight_decay = 4e-5
    c.search.max_macs = BUDGETS[budget.lower()]
    return c
