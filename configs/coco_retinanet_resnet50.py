r"""RetinaNet (keras-hub) on ResNet-50 over COCO 2017: the detection setting CafeNet reports its backbones in.

    tfds build coco/2017 --data_dir /data/tfds      # once, ~25 GB (or --config.data.download=True)
    python -m cafe_tf.train_detector --config configs/coco_retinanet_resnet50.py --workdir runs/coco_r50 \
        --config.data.data_dir=/data/tfds
    # a searched backbone: --config.detector.backbone=runs/in_r50/widths.json \
    #     --config.detector.backbone_checkpoint=runs/in_r50/retrain/checkpoints

The paper's setting as we read it (docs/papers.md): RetinaNet with FPN P3-P7, 640x640 inputs
(resize and pad), horizontal flips, the searched ImageNet backbone swapped in for ResNet-50. The
1x schedule here: SGD 0.01 (batch 16) momentum 0.9, wd 1e-4, 12 epochs, warm-up, step decay at
epochs 8 and 11. Without an ImageNet-pretrained ``.keras`` backbone it trains from scratch, which
needs far longer. mAP from pycocotools on validation (5,000 images).
"""

from cafe_tf import config as cfg
from cafe_tf.detection.model import detector_section


def get_config():
    c = cfg.base_config()
    c.data.name = "coco/2017"
    c.data.image_size = 640
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    c.data.shuffle_buffer = 1000
    c.model.name = "resnet50"  # unused by the detector (its backbone is config.detector.backbone)

    c.detector = detector_section()
    c.detector.backbone = "resnet50"
    c.detector.head_convs = 4
    c.detector.max_boxes = 100

    c.train.epochs = 12
    c.train.optimizer = "sgd"
    c.train.lr = 0.01
    c.train.momentum = 0.9
    c.train.weight_decay = 1e-4
    c.train.schedule = "step"
    c.train.step_epochs = (8, 11)
    c.train.warmup_epochs = 0.1
    c.train.log_every = 100
    c.train.eval_splits = ("validation",)
    return cfg.lock(c)
