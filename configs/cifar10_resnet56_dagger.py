r"""CIFAR-10, ResNet-56, Dagger filter pruning to 50% of the MACs, then fine-tuning.

    cafe-tf prune --config configs/cifar10_resnet56_dagger.py --workdir runs/c10_r56_dagger
    cafe-tf prune --config configs/cifar10_resnet56_dagger.py --workdir runs/c10_r56_l1 \
        --config.prune.method=l1 --config.prune.pretrained=runs/c10_r56_dagger/pretrain/model.keras

Stage 0 (without --config.prune.pretrained) trains ResNet-56 with the standard CIFAR recipe: SGD
0.1, momentum 0.9, weight decay 5e-4, cosine over 200 epochs, batch 128, pad-4 crop + flip.
Gate training (within a 10-30-epoch range for CIFAR): 20 epochs, Adam 1e-3 on the Dagger module,
the network jointly with SGD 0.01 (cosine), lambda = 2 on |F/F_target - 1|. Fine-tuning: 100 epochs,
SGD 0.05 cosine. Published context at ~50% FLOPs (third-party tables): HRank 93.26 -> 93.17,
LFPC 93.59 -> 93.34, DMC 93.62 -> 93.69, DepGraph 93.53 -> 93.77. Needs CIFAR-10 prepared in the
data_dir (add --config.data.download=True once, with network access). The Dagger details are
cafe-tf's design (see cafe_tf/dagger/).
"""

from cafe_tf import config as cfg
from cafe_tf.dagger.pipeline import dagger_section, prune_section


def get_config():
    c = cfg.base_config()
    c.data.name = "cifar10"
    c.data.batch_size = 128
    c.data.augment = "crop_flip"
    c.data.cache = True
    c.model.name = "resnet56"
    c.train.epochs = 200
    c.train.lr = 0.1
    c.train.weight_decay = 5e-4
    c.train.schedule = "cosine"
    c.train.log_every = 100
    c.prune = prune_section()
    c.prune.target_macs_ratio = 0.5
    c.dagger = dagger_section()
    c.dagger.epochs = 20.0
    c.dagger.main_lr = 0.01
    c.dagger.checkpoint_every = 500
    c.finetune = cfg.base_config().train
    c.finetune.epochs = 100
    c.finetune.lr = 0.05
    c.finetune.weight_decay = 5e-4
    c.finetune.schedule = "cosine"
    c.finetune.log_every = 100
    return cfg.lock(c)
