"""Object detection with keras-hub's RetinaNet on a searched or pruned backbone.

* :mod:`cafe_tf.detection.backbone`: any network the channel graph accepts as a keras-hub
  feature-pyramid backbone (P3-P5), and why the FPN and heads are fixed-width boundaries;
* :mod:`cafe_tf.detection.data`: COCO 2017 (tfds) and an offline Fashion-MNIST detection set in
  keras-hub's box format, with Keras's box-aware augmentation layers;
* :mod:`cafe_tf.detection.model`: the detector (``RetinaNetObjectDetector``) from a config;
* :mod:`cafe_tf.detection.evaluate`: COCO mAP with pycocotools;
* :mod:`cafe_tf.detection.export`: int8 TFLite export, decoding and NMS, parity with Keras.

Only these modules import keras-hub, and only inside functions, so ``import cafe_tf`` never loads it.
"""
