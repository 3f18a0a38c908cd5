r"""CIFAR-10, VGG-16, CafeNet width search at 50% of the MACs: the paper's CIFAR-10 setting.

    python -m cafe_tf.pipeline --config configs/cifar10_vgg16.py --workdir runs/c10_vgg16 \
        --config.data.data_dir=~/tensorflow_datasets

Needs CIFAR-10 prepared in the data_dir (add --config.data.download=True once, with network access).
Full network: 313,201,664 MACs (the published ~313 M), 14,732,490 params
(cafe_tf.flops, 32x32x3, 10 classes, one-layer head); budget 50% = 156,600,832 MACs
(search.macs_ratio = 0.5: our choice of VGG-16 budget).

Stages and recipe: those of configs/cifar10_resnet20.py (this file loads its get_config and changes
only the model): 200-epoch min-min supernet (locally free, r = 1, K = 2, FLOPs-sensitive bins),
evolution with the library's default settings, 200-epoch retraining from scratch.
"""

from cafe_tf.config import sibling_config


def get_config():
    c = sibling_config(__file__, "cifar10_resnet20.py")  # the same CIFAR recipe, search space and search
    c.model.name = "vgg16_cifar"
    c.search.macs_ratio = 0.5  # our choice of VGG-16 budget
    return c
