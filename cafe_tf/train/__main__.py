"""Train a plain (non-supernet) model on any dataset with the standard training loop.

  python -m cafe_tf.train --config configs/fashion_mnist_cnn.py --workdir runs/fmnist_cnn
  python -m cafe_tf.train --config configs/fashion_mnist_cnn.py --workdir runs/x --config.train.epochs=2

The config (configs/*.py) names the dataset, the registered model, the recipe and the
tf.distribute strategy; any field can be overridden with --config.<section>.<key>=<value>.
Running again with the same --workdir resumes from the last checkpoint.

Writes into --workdir: checkpoints/ (tf.train.CheckpointManager), tensorboard/ (train and eval
curves: tensorboard --logdir <workdir>/tensorboard), history.json, metrics.json (final validation
and test metrics, versioned) and model.keras; the log goes to train.log.

Exit codes: 0 done, 1 the job failed, 2 usage or config error.
"""

import os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from cafe_tf import programs  # noqa: E402

_CONFIG, _WORKDIR = programs.define_config_flags()

# Extension point (issue 4): --widths=widths.json trains a searched network from scratch and
# --init_from_supernet inherits its weights. Both become a model_fn handed to standard.run()
# (see cafe_tf.train.standard's module doc); the loop itself does not change.


def main(config, workdir: str) -> None:
    from cafe_tf.train import standard

    model_fn = None  # the registry model config.model names
    metrics = standard.run(config, workdir, model_fn=model_fn)
    final = metrics["final"] or {}
    lines = [f"done: {metrics['steps']} steps, {metrics['epochs']} epochs"]
    lines += [f"  {split:<10} loss {r['loss']:.4f}  accuracy {r['accuracy']:.4f}" for split, r in final.items()]
    lines += [
        f"checkpoints: {os.path.join(workdir, 'checkpoints')}",
        f"tensorboard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
        f"metrics:     {os.path.join(workdir, 'metrics.json')}",
        f"model:       {os.path.join(workdir, 'model.keras')}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    programs.run_program(main)
