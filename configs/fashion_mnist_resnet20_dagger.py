r"""Fashion-MNIST, ResNet-20, Dagger filter pruning to 50% of the MACs, then fine-tuning.

    cafe-tf prune --config configs/fashion_mnist_resnet20_dagger.py --workdir runs/fm_r20_dagger
    cafe-tf prune --config configs/fashion_mnist_resnet20_dagger.py --workdir runs/fm_r20_l1 \
        --config.prune.method=l1

Without --config.prune.pretrained, stage 0 trains ResNet-20 with the standard recipe (SGD 0.1,
cosine, 30 epochs, flip + pad-4 crop). Gate training: 10 epochs, Adam 1e-3 on the Dagger module,
SGD 0.01 (cosine) on the network jointly, lambda = 2 on |F/F_target - 1|. Fine-tuning: 20 epochs,
SGD 0.01 cosine. The Dagger details are cafe-tf's design (see cafe_tf/dagger/).
"""

from cafe_tf import config as cfg
from cafe_tf.dagger.pipeline import dagger_section, prune_section


def get_config():
    c = cfg.base_config()
    c.data.name = "fashion_mnist"
    c.data.batch_size = 128
    c.data.augment = "crop_flip"
    c.data.cache = True
    c.model.name = "resnet20"
    c.train.epochs = 30
    c.train.lr = 0.1
    c.train.weight_decay = 5e-4
    c.train.schedule = "cosine"
    c.train.log_every = 100
    c.prune = prune_section()
    c.prune.target_macs_ratio = 0.5
    c.dagger = dagger_section()
    c.dagger.epochs = 10.0
    c.finetune = cfg.base_config().train
    c.finetune.epochs = 20
    c.finetune.lr = 0.01
    c.finetune.weight_decay = 5e-4
    c.finetune.schedule = "cosine"
    c.finetune.log_every = 100
    return cfg.lock(c)
