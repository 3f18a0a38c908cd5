"""CIFAR-10, ResNet-20, plain training with the standard CIFAR recipe.

SGD lr 0.1, momentum 0.9, weight decay 5e-4 (L2 in the loss), cosine decay over 200 epochs,
batch 128, pad-4 random crop + horizontal flip. Needs CIFAR-10 prepared in the data_dir
(add --config.data.download=True once, with network access).

    cafe-tf train --config configs/cifar10_resnet20_train.py --workdir runs/c10_r20
"""

from cafe_tf import config as cfg


def get_config():
    c = cfg.base_config()
    c.data.name = "cifar10"
    c.data.batch_size = 128
    c.data.augment = "crop_flip"
    c.data.cache = True  # 150 MB of uint8 images
    c.model.name = "resnet20"
    c.train.epochs = 200
    c.train.optimizer = "sgd"
    c.train.lr = 0.1
    c.train.momentum = 0.9
    c.train.nesterov = False
    c.train.weight_decay = 5e-4
    c.train.schedule = "cosine"
    c.train.log_every = 100
    return cfg.lock(c)
