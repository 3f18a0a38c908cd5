r"""Train a CafeNet supernet with locally free weight sharing and the min-min strategy.

  python -m cafe_tf.train_supernet --config configs/fashion_mnist_resnet20.py --workdir runs/fm_r20
  python -m cafe_tf.train_supernet --config configs/fashion_mnist_resnet20.py --workdir runs/fm_r20_fixed \
      --config.supernet.sharing=fixed

The recipe and the min-min options are the config's ``supernet`` section (see
cafe_tf/training/supernet.py: sharing, bins, r, num_candidates, sandwich, epochs, lr, ...); the data
and the model are its ``data`` and ``model`` sections. Running again with the same --workdir resumes
from the last checkpoint.

Writes into --workdir: checkpoints/, tensorboard/supernet (losses of the sampled, max and min nets,
the candidates' loss gap, lr: tensorboard --logdir <workdir>/tensorboard), supernet.keras (the full
model holding every shared weight) and supernet.json (model, search space, settings, validation
accuracy of a few widths); the log goes to train_supernet.log.

Exit codes: 0 done, 1 the job failed, 2 usage or config error.
"""

import os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from cafe_tf import programs

_CONFIG, _WORKDIR = programs.define_config_flags()


def main(config, workdir: str) -> None:
    from cafe_tf.training import supernet as supernet_lib

    result = supernet_lib.run(config, workdir)
    lines = [f"done: {result['steps']} steps; full net {result['full_macs']:,} MACs, {result['full_params']:,} params"]
    for row in result.get("validation", []):
        lines.append(f"  {row['name']:<14} {row['macs']:>12,} MACs  validation accuracy {row['accuracy']:.4f}")
    lines += [
        f"supernet:    {os.path.join(workdir, 'supernet.keras')}",
        f"summary:     {os.path.join(workdir, 'supernet.json')}",
        f"tensorboard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    from cafe_tf.training.supernet import validate_supernet

    programs.run_program(main, extra_validators={"supernet": validate_supernet})
