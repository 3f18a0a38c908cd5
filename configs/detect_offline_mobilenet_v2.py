r"""RetinaNet (keras-hub) on MobileNetV2-0.35 over the offline Fashion-MNIST detection set: a CPU-sized demo.

    # 1. the backbone as a Fashion-MNIST classifier, ~5 min on 2 busy cores (32x32 here, as measured in
    #    docs/results/detection.md; a classifier at the native 28x28 works too: its levels are found at the detector's 128x128)
    cafe-tf train --config configs/fashion_mnist_cnn.py --workdir runs/fm_mnv2 \
        --config.model.name=mobilenet_v2 --config.model.width_mult=0.35 --config.model.bn_momentum=0.9 \
        --config.data.image_size=32 --config.train.epochs=3
    # 2. the detector on it
    python -m cafe_tf.train_detector --config configs/detect_offline_mobilenet_v2.py --workdir runs/det_fm \
        --config.detector.backbone=runs/fm_mnv2/model.keras

Without step 1 (the default backbone: MobileNetV2 built fresh) the detector does not learn in a
CPU-sized run (AP50 0.001 after 250 steps); from the classifier it does (docs/results/detection.md).
The set (``fashion_mnist_detection``) is built on first use from the local Fashion-MNIST files:
2,000 training and 300 test canvases of 128x128, 1-4 items each at 1x or 2x (tight boxes of
14-56 pixels, median 26; cafe_tf/detection/data.py). A 1-channel backbone gets grey images.
Anchors: ``anchor_size`` 2 (P3: 16-25 pixels, P4: 32-50, P5: 64-101). keras-hub's default 4
starts at 32 pixels at P3, and RetinaNet matches a box to an anchor only at IoU >= 0.5: 29% of the
test boxes (the small items) overlap no anchor that much and are never learned; with 2, 1.4%.
Levels P3-P5 by stride; the FPN adds P6 / P7 (keras-hub's, 256 channels); each head has one 3x3
convolution before its output (keras-hub's default is 4) to keep a CPU step short;
BatchNormalization momentum 0.9 (MobileNetV2's 0.999 is for long runs: after 250 steps its
moving statistics make every test image look alike). Adam 1e-3, cosine, 3 epochs of batch 16.
Other backbones: --config.detector.backbone=<a .keras file | a widths.json | resnet50>;
uniform width: --config.detector.width_mult=0.16 (built-in) or a classifier trained at that width.
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
    c.detector.anchor_size = 2.0  # P3 anchors of 16-25 px: the set's items are 14-56 px (see the doc above)
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
