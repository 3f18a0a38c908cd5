r"""ImageNet, ResNet-50, Dagger filter pruning to 50% of the MACs, then fine-tuning.

    cafe-tf prune --config configs/imagenet_resnet50_dagger.py --workdir runs/in_r50_dagger \
        --config.prune.pretrained=resnet50_imagenet.keras

Give a pretrained ResNet-50 (stage 0 would otherwise train one: 90 epochs, SGD 0.4 for batch 1024
with 5 warm-up epochs, cosine, weight decay 1e-4, label smoothing 0.1, inception crop + flip).
Gate training (within a 5-20-epoch range for ImageNet): 10 epochs, Adam 1e-3 on the Dagger
module, the network jointly with SGD 0.01 (cosine), lambda = 2 on |F/F_target - 1|. Fine-tuning:
90 epochs, SGD 0.04 cosine (batch 1024), label smoothing 0.1. Every training stage (gate training
included) runs on config.distribute's strategy (mirrored here; the global batch of 1024 is split
over the replicas); gate training sets no mixed precision of its own. Published context at ~50% FLOPs: Dagger 76.1
top-1 (the paper's headline); DMCP 76.20; LRF 75.71; SCOP 75.26; HRank 74.98. ImageNet must be
prepared in the data_dir by hand (see cafe_tf.data). The Dagger details are cafe-tf's design
(see cafe_tf/dagger/).
"""

from cafe_tf import config as cfg
from cafe_tf.dagger.pipeline import dagger_section, prune_section


def get_config():
    c = cfg.base_config()
    c.data.name = "imagenet2012"
    c.data.batch_size = 1024
    c.data.eval_batch_size = 1024
    c.data.augment = "inception"
    c.data.image_size = 224
    c.data.shuffle_buffer = 20_000
    c.model.name = "resnet50"
    c.distribute.strategy = "mirrored"
    c.train.epochs = 90
    c.train.lr = 0.4
    c.train.warmup_epochs = 5.0
    c.train.weight_decay = 1e-4
    c.train.label_smoothing = 0.1
    c.train.schedule = "cosine"
    c.train.mixed_precision = "mixed_bfloat16"
    c.train.log_every = 200
    c.train.checkpoint_every = 2000
    c.train.eval_splits = ("validation",)
    c.prune = prune_section()
    c.prune.target_macs_ratio = 0.5
    c.dagger = dagger_section()
    c.dagger.epochs = 10.0
    c.dagger.main_lr = 0.01
    c.dagger.main_weight_decay = 1e-4
    c.dagger.log_every = 200
    c.dagger.checkpoint_every = 2000
    c.finetune = cfg.base_config().train
    c.finetune.epochs = 90
    c.finetune.lr = 0.04
    c.finetune.weight_decay = 1e-4
    c.finetune.label_smoothing = 0.1
    c.finetune.schedule = "cosine"
    c.finetune.mixed_precision = "mixed_bfloat16"
    c.finetune.log_every = 200
    c.finetune.checkpoint_every = 2000
    c.finetune.eval_splits = ("validation", "test")
    return cfg.lock(c)
