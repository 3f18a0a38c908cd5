"""Train a plain (non-supernet) model on any dataset with the standard training loop.

  cafe-tf train --config configs/fashion_mnist_cnn.py --workdir runs/fmnist_cnn
  cafe-tf train --config configs/fashion_mnist_cnn.py --workdir runs/x --config.train.epochs=2
  cafe-tf train --config C --workdir W/retrain --widths W/widths.json      # a searched net, from scratch
  cafe-tf train --config C --workdir W/finetune --widths W/widths.json --init_from_supernet W/supernet.keras

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

from absl import flags

from cafe_tf import programs

_CONFIG, _WORKDIR = programs.define_config_flags()

# --widths / --init_from_supernet become a model_fn handed to standard.run() (see
# cafe_tf.training.standard's module doc); the loop itself does not change.
_WIDTHS = flags.DEFINE_string(
    "widths", None, "a widths.json from `python -m cafe_tf.search`: train that searched network (instead of "
    "config.model) from scratch")
_INIT_FROM_SUPERNET = flags.DEFINE_string(
    "init_from_supernet", None, "with --widths: a supernet.keras from `python -m cafe_tf.train_supernet`; start "
    "from its weights of the searched channels (fine-tuning)")


def main(config, workdir: str) -> None:
    from cafe_tf.config import ConfigError
    from cafe_tf.training import standard

    model_fn = None  # the registry model config.model names
    if _INIT_FROM_SUPERNET.value and not _WIDTHS.value:
        raise ConfigError("--init_from_supernet needs --widths (which channels of the supernet to train)")
    if _WIDTHS.value:
        from cafe_tf.training.subnet import subnet_factory

        model_fn = subnet_factory(_WIDTHS.value, _INIT_FROM_SUPERNET.value, config.model.input_scaling)
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
