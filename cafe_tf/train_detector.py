r"""Train a RetinaNet detector (keras-hub) on a built-in, searched, pruned or user backbone.

  python -m cafe_tf.train_detector --config configs/detect_offline_mobilenet_v2.py --workdir runs/det
  python -m cafe_tf.train_detector --config configs/detect_offline_mobilenet_v2.py --workdir runs/det_half \
      --config.detector.width_mult=0.5
  python -m cafe_tf.train_detector --config configs/coco_retinanet_resnet50.py --workdir runs/coco \
      --config.data.data_dir=/data/tfds

The config's ``detector`` section names the backbone (a built-in model, a .keras classification
checkpoint or Dagger-pruned model, or a widths.json with an optional backbone_checkpoint), its
pyramid levels and the heads; ``data`` names the dataset (fashion_mnist_detection, built offline
from the local Fashion-MNIST files, or coco/2017, which must be prepared in data_dir) and the image
size; ``train`` is the recipe. Running again with the same --workdir resumes from the last checkpoint.

Writes into --workdir: checkpoints/, tensorboard/ (loss, learning rate, AP / AP50 / AP75: tensorboard
--logdir <workdir>/tensorboard), history.json, metrics.json (COCO mAP from pycocotools, versioned)
and detector.keras; the log goes to train_detector.log.

Exit codes: 0 done, 1 the job failed, 2 usage or config error.
"""

import os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from cafe_tf import programs

_CONFIG, _WORKDIR = programs.define_config_flags()


def main(config, workdir: str) -> None:
    from cafe_tf.detection import train as train_lib

    metrics = train_lib.train(config, workdir)
    final = metrics["final"]
    lines = [f"done: {metrics['steps']} steps, {metrics['epochs']} epochs",
             "  " + "  ".join(f"{k} {final[k]:.4f}" for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")),
             f"checkpoints: {os.path.join(workdir, 'checkpoints')}",
             f"tensorboard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
             f"metrics:     {os.path.join(workdir, 'metrics.json')}",
             f"model:       {os.path.join(workdir, 'detector.keras')}"]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    programs.run_program(main, sections=("train",))
