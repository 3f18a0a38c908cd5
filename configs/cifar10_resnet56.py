r"""CIFAR-10, ResNet-56, CafeNet width search at ~50% of the MACs: the paper's CIFAR-10 setting.

    python -m cafe_tf.pipeline --config configs/cifar10_resnet56.py --workdir runs/c10_r56 \
        --config.data.data_dir=~/tensorflow_datasets

Needs CIFAR-10 prepared in the data_dir (add --config.data.download=True once, with network access).
Full network: 125,747,840 MACs (the published ~125 M), 860,026 params
(cafe_tf.flops, 32x32x3, 10 classes); budget 50% = 62,873,920 MACs
(published comparisons are at ~50% FLOPs for ResNet-56; AutoSlim's TF2 re-implementation
reaches 93.91 -> 93.59 at 62.6 M MACs).

Stages and recipe: those of configs/cifar10_resnet20.py (this file loads its get_config and changes
only the model): 200-epoch min-min supernet (locally free, r = 1, K = 2, FLOPs-sensitive bins),
evolution with the library's default settings, 200-epoch retraining from scratch.
"""

from cafe_tf.config import sibling_config


def get_config():
    c = sibling_config(__file__, "cifar10_resnet20.py")  # the same CIFAR recipe, search space and search
    c.model.name = "resnet56"
    c.search.macs_ratio = 0.5  # ResNet-56 at ~50% FLOPs, as published (AutoSlim 62.6 M MACs)
    return c
