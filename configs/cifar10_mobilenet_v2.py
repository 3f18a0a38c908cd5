r"""CIFAR-10, MobileNetV2, CafeNet width search at 50% of the MACs: the paper's CIFAR-10 setting.

    python -m cafe_tf.pipeline --config configs/cifar10_mobilenet_v2.py --workdir runs/c10_mbv2 \
        --config.data.data_dir=~/tensorflow_datasets

Needs CIFAR-10 prepared in the data_dir (add --config.data.download=True once, with network access).
Model: `mobilenet_v2_cifar`, MobileNetV2 1.0 with the CIFAR strides (stride 1 in the stem and in
stage 2, so 32x32 inputs end at a 4x4 feature map; cafe_tf.models.mobilenet_v2). Full network:
87,976,448 MACs, 2,270,794 params (cafe_tf.flops, 32x32x3, 10 classes); budget 50% = 43,988,224
MACs (search.macs_ratio = 0.5: our choice of CIFAR MobileNetV2 budget).

Stages and recipe: those of configs/cifar10_resnet20.py (this file loads its get_config and changes
only the model): 200-epoch min-min supernet (locally free, r = 1, K = 2, FLOPs-sensitive bins),
evolution with the library's default settings, 200-epoch retraining from scratch.

Our blocks are the reference MobileNetV2 ones; kuangliu/pytorch-cifar's CIFAR MobileNetV2 (the same
strides) adds 1x1 conv shortcuts where a stride-1 block changes channels (90.1 M MACs by our count),
so compare with runs of this builder. `--config.model.name=mobilenet_v2` selects the ImageNet
strides (stride-2 stem and stage 2: a 1x1 last feature map, 6,124,928 MACs at 32x32).
"""

from cafe_tf.config import sibling_config


def get_config():
    c = sibling_config(__file__, "cifar10_resnet20.py")  # the same CIFAR recipe, search space and search
    c.model.name = "mobilenet_v2_cifar"  # stride-1 stem and stage 2: see the docstring
    c.search.macs_ratio = 0.5  # our choice of CIFAR MobileNetV2 budget
    return c
