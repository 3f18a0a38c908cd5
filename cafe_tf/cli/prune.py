r"""Prune a pretrained CNN's filters to a MACs budget with Dagger, then fine-tune it.

  cafe-tf prune --config configs/fashion_mnist_resnet20_dagger.py --workdir runs/dagger
  cafe-tf prune --config configs/fashion_mnist_resnet20_dagger.py --workdir runs/d30 \
      --config.prune.target_macs_ratio=0.3 --config.prune.pretrained=my_model.keras
  cafe-tf prune --config ... --workdir runs/l1 --config.prune.method=l1   # baseline

Stages, each skipped when its artifact in --workdir is valid (training stages resume from their
checkpoints): pretrain (only without --config.prune.pretrained: trains config.model with the
standard loop) -> gate training (Dagger module + FLOPs-aware regulariser; methods dagger/free)
-> exact-target selection and physical pruning (prune/widths.json, prune/pruned.keras) -> fine-tuning
(finetune/model.keras, finetune/metrics.json) -> report.md, gates.png, gate_histograms.png, summary.json.

Methods (config.prune.method): dagger (default), free (ablation: free gate logits), l1 and uniform
(baselines on the same exact-target routine). Ablations: --config.dagger.flops_weight=0 (no FLOPs
term); --config.dagger.main=frozen or frozen_batch_stats (the network does not train while the
gates do; BN on its pretrained or on batch statistics); --config.dagger.target_ramp=0.5 lowers the
target gradually (cubic, over the first half of gate training); --config.prune.min_keep_ratio=0.25
keeps a quarter of every channel group (in gate training too); --config.dagger.group_bias=False
drops the module's learned offset per group. The Dagger module's architecture and the
regulariser's options are our design: see docs/papers.md.

Exit codes: 0 done, 1 the job failed, 2 usage or config error.
"""

import os

from cafe_tf import programs

_CONFIG, _WORKDIR = programs.define_config_flags()


def main(config, workdir: str) -> None:
    from cafe_tf.dagger import pipeline

    summary = pipeline.run(config, workdir)
    info, acc = summary["exact_target"], summary["accuracy"]
    lines = [
        f"done: {summary['method']} to {info['achieved_macs']} MACs = {info['achieved_ratio']:.4f} of "
        f"{summary['full_macs']} (target {summary['target_macs_ratio']:.4f}, {info['relative_error']:+.3%})",
        *(f"  accuracy {k:<24} {v:.4f}" for k, v in acc.items()),
        f"pruned model: {os.path.join(workdir, summary['paths']['pruned_model'])}",
        f"widths:       {os.path.join(workdir, summary['paths']['widths'])}",
        f"report:       {os.path.join(workdir, summary['paths']['report'])}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    from cafe_tf.dagger.pipeline import extra_validators

    programs.run_program(main, extra_validators=extra_validators())
