r"""RetinaNet (keras-hub) on MobileNetV2-0.35 over the offline Fashion-MNIST detection set: a CPU-sized demo.

    python -m cafe_tf.train_detector --config configs/detect_offline_mobilenet_v2.py --workdir runs/det_fm

The set (``fashion_mnist_detection``) is built on first use from the local Fashion-MNIST files:
2,000 training and 300 test canvases of 128x128, 1-4 items each (cafe_tf/detection/data.py).
Backbone: MobileNetV2 at width 0.35, fresh weights, levels P3-P5 by stride; the FPN adds P6 / P7
(keras-hub's, 256 channels); each head has one 3x3 convolution before its output (keras-hub's
default is 4) to keep a CPU step short; BatchNormalization momentum 0.9 (MobileNetV2's 0.999 is
for long runs: after 250 steps its moving statistics make every test image look alike).
Adam 1e-3, cosine, 3 epochs of batch 16. Items pasted at 1x (about 14-28 pixels) are partly
smaller than P3's smallest anchor (32 pixels, keras-hub's anchor_size 4 x stride 8): RetinaNet
matches a box to an anchor at IoU >= 0.5 only, so the smallest items are never learned.
Other backbones: --config.detector.backbone=<a .keras file | a widths.json | resnet50>;
uniform width: --config.detector.width_mult=0.5.
"""

from cafe_tf import config as cfg
from cafe_tf.detection.model import detector_section


def get_config():
    c = cfg.base_config()
    c.data.name = "fashion_mnist_detection"
    c.data.image_size = 128
    c.data.batch_size = 16
    c.data.eval_batch_size = 50
    c.data.shuffle_buffer = 2000
    c.model.name = "mobilenet_v2"  # unused by the detector (its backbone is config.detector.backbone)

    c.detector = detector_section()
    c.detector.backbone = "mobilenet_v2"
    c.detector.width_mult = 0.35
    c.detector.head_convs = 1
    c.detector.bn_momentum = 0.9  # MobileNetV2's 0.999 leaves the moving statistics far off in 250 steps
    c.detector.max_boxes = 8

    c.train.epochs = 3
    c.train.optimizer = "adam"
    c.train.lr = 1e-3
    c.train.weight_decay = 0.0
    c.train.schedule = "cosine"
    c.train.log_every = 20
    c.train.eval_splits = ("test",)
    return cfg.lock(c)
