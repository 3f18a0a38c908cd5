r"""ImageNet, EfficientNet-B0, CafeNet width refinement at B0's own MACs (the paper's headline).

    python -m cafe_tf.pipeline --config configs/imagenet_efficientnet_b0.py --workdir runs/in_b0 \
        --config.data.data_dir=/data/tensorflow_datasets

Published figures (the CafeNet abstract; BCNet's papers): EfficientNet-B0's widths refined by CafeNet are +0.41
top-1 at the same FLOPs (BCNet +0.48, BCNetV2 +0.65 over a 76.88 baseline, so CafeNet ~77.29).
The budget is B0's own cost, 385,814,752 MACs (the published 0.39 B; cafe_tf.flops at 224x224x3,
1000 classes, 5,330,564 params), and candidates are kept in [0.8, 1] x that. The supernet is B0
at **1.5x** width (863,173,104 MACs), so the search can move width between layers at B0's cost
instead of returning B0 itself (our choice, AutoSlim's wide-supernet protocol as we recall it;
the CafeNet text was unavailable). ImageNet must be prepared in the data_dir by hand.

The fair baseline is B0 retrained with this same recipe (`cafe-tf train --config
configs/imagenet_efficientnet_b0.py --config.model.width_mult=1.0 --workdir ...`): the official
B0 recipe (RMSProp, AutoAugment, EMA of weights, 350 epochs) is not expressible in our configs
(optimizers: sgd | adam), so the published 76.88 / 77.29 are context, not targets.

Stages (the paper's hyper-parameters are unavailable; an ImageNet recipe on the 100-epoch
scale, our choices):

* supernet: min-min training (locally free sharing, r = 1 channel (zone_unit), K = 2 candidates, FLOPs-sensitive
  bins, no sandwich), 100 epochs, SGD momentum 0.9 (Nesterov), lr 0.4 for batch 1024 with 5
  warm-up epochs, cosine, weight decay 1e-5 (EfficientNet's), label smoothing 0.1, inception crop
  + flip, bfloat16 mixed precision, MirroredStrategy over the machine's GPUs.
* search: evolution with the library's default settings (population 50, 20 generations, top-10 parents,
  mutation 0.1 per group), each candidate the best of K = 2 arrangements after BN recalibration
  on 256 training images, on the whole validation split (10,000 held-out training images).
* train (the searched widths retrained from scratch, the paper's protocol): the same recipe for
  250 epochs (ours).
"""

from cafe_tf.config import sibling_config

# EfficientNet-B0's own MACs at width 1.0, 224x224x3, 1000 classes (cafe_tf.flops; tested).
B0_MACS = 385_814_752


def get_config():
    # The ImageNet MobileNetV2 recipe (1.5x supernet, data, search, 250-epoch retraining); B0's
    # weight decay and its own MACs as the budget.
    c = sibling_config(__file__, "imagenet_mobilenet_v2.py")
    c.model.name = "efficientnet_b0"
    c.train.weight_decay = 1e-5
    c.supernet.weight_decay = 1e-5
    c.search.max_macs = B0_MACS
    return c
