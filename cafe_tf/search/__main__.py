r"""Search the widths of a trained CafeNet supernet under a budget; writes <workdir>/widths.json.

  python -m cafe_tf.search --config configs/fashion_mnist_resnet20.py --workdir runs/fm_r20
  python -m cafe_tf.search --config configs/fashion_mnist_resnet20.py --workdir runs/fm_r20 \
      --config.search.max_macs=20000000
  python -m cafe_tf.search --config C --workdir W --config.search.max_params=100000
  python -m cafe_tf.search --config C --workdir W --config.search.max_latency_ms=1.5 \
      --config.search.latency_table=tables/host.json
  python -m cafe_tf.search --config C --workdir W2 --config.search.method=uniform \
      --config.search.supernet=W/supernet.keras          # a baseline: random | greedy | uniform

The supernet is --workdir's supernet.keras (from `python -m cafe_tf.train_supernet`) unless
config.search.supernet names another. With no budget set (search.max_macs, max_params and
max_latency_ms all 0), the budget is config.search.macs_ratio of the full net's MACs. Candidates are
scored on the validation split (never test), cached in search_cache.json; the evolution's state goes
to search_state.json after each generation, so running the same command again resumes. widths.json
holds the chosen channels, MACs, params, the score, the Pareto set of everything scored and the
history; train it with `cafe-tf train --config C --workdir R --widths <workdir>/widths.json`.

Under max_latency_ms, the table must be for this supernet's model (and for
config.search.latency_target when set). The chosen net is then exported with the table's
quantization and measured on the table's target (config.search.latency_check; android needs
config.search.benchmark_binary); widths.json's latency_check holds measured and predicted ms side
by side, and a net that measures over the budget by more than the table's stated error (its
held-out p90 relative error) stops the search with an error naming both, before widths.json is written.

Exit codes: 0 done, 1 the job failed (e.g. an infeasible budget: the message names the feasible
range), 2 usage or config error.
"""

import os

from cafe_tf import programs

_CONFIG, _WORKDIR = programs.define_config_flags()


def main(config, workdir: str) -> None:
    from cafe_tf.config import ConfigError
    from cafe_tf.search import run as run_lib

    if "search" not in config:
        raise ConfigError("the config has no 'search' section; start from cafe_tf.search.search_section() "
                          "(see configs/fashion_mnist_resnet20.py)")
    record = run_lib.run(config, workdir)
    print("\n".join(run_lib.summary_lines(record) + [f"widths: {os.path.join(workdir, 'widths.json')}"]), flush=True)


if __name__ == "__main__":
    from cafe_tf.search.run import validate_search

    programs.run_program(main, extra_validators={"search": validate_search})
