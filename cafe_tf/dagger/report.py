"""The pruning report: achieved MACs against the target, per-layer kept ratios, gate histograms.

Writes ``<dir>/report.md`` and two figures: ``gates.png`` (all gates' distribution, kept ratio per
group, MACs during gate training) and ``gate_histograms.png`` (one small histogram of gate values
per group). Everything goes through ``cafe_tf.io`` (atomic writes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cafe_tf import io
from cafe_tf.graph import ChannelGraph
from cafe_tf.report import figure_png

DESIGN_NOTE = (
    "The Dagger module's architecture, the regulariser's options and the exact-target routine are "
    "cafe-tf's design (the paper's method section was not available to us); see `cafe_tf/dagger/`."
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def render_overview(rows: Sequence[Mapping[str, Any]], logits: Mapping[str, np.ndarray] | None,
                    history: Sequence[Mapping[str, float]] | None, target_ratio: float) -> bytes:
    """PNG: gate value histogram (all filters), kept ratio per group, MACs ratio during gate training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    ax = axes[0]
    if logits:
        values = _sigmoid(np.concatenate([np.asarray(v) for v in logits.values()]))
        ax.hist(values, bins=40, range=(0, 1), color="tab:blue", alpha=0.8)
        ax.axvline(0.5, color="tab:red", ls="--", lw=1, label="threshold 0.5")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no gates (baseline method)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("gate sigmoid(logit)")
    ax.set_ylabel("filters")
    ax.set_title("Gate values, all filters")
    ax = axes[1]
    ratios = [r["ratio"] for r in rows]
    ax.bar(np.arange(len(rows)), ratios, color="tab:green")
    ax.axhline(target_ratio, color="tab:red", ls="--", lw=1, label=f"MACs target {target_ratio:.2f}")
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels([r["group"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kept channels / channels")
    ax.set_title("Kept ratio per channel group")
    ax.legend(fontsize=8)
    ax = axes[2]
    if history:
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["macs_ratio"] for h in history], "-o", ms=3, label="MACs ratio (hard gates)")
        ax.plot(steps, [h["accuracy"] for h in history], "-s", ms=3, label="train accuracy")
        ax.axhline(target_ratio, color="tab:red", ls="--", lw=1, label="target")
        ax.set_xlabel("gate-training step")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no gate training", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Gate training")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def render_group_histograms(logits: Mapping[str, np.ndarray]) -> bytes:
    """PNG: one histogram of gate values per group, open gates in green and closed in gray."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(logits)
    cols = max(1, math.ceil(math.sqrt(len(names))))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        v = _sigmoid(np.asarray(logits[name]))
        ax.hist([v[v > 0.5], v[v <= 0.5]], bins=20, range=(0, 1), stacked=True, color=["tab:green", "tab:gray"])
        ax.set_title(f"{name} ({int((v > 0.5).sum())}/{v.size})", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return figure_png(fig)


def _fmt_int(x: float | int) -> str:
    x = float(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.4g}{suffix}"
    return f"{x:.0f}"


def logit_trace_table(trace: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per group, one column per recorded step, the group's mean gate logit
    (``GateTrainer.logit_trace``); none for an empty trace."""
    if not trace:
        return []
    steps = [int(t["step"]) for t in trace]
    groups = list(trace[0]["mean_logit"])
    lines = ["", "## Mean gate logit per group during gate training", "",
             "| group | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|" + "---:|" * len(steps)]
    for g in groups:
        cells = [f"{t['mean_logit'][g]:+.3f}" if g in t["mean_logit"] else "–" for t in trace]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines


def write_report(
    out_dir: str,
    graph: ChannelGraph,
    selection: Mapping[int, np.ndarray],
    info: Mapping[str, Any],
    logits: Mapping[int, np.ndarray] | None = None,
    history: Sequence[Mapping[str, float]] | None = None,
    metrics: Mapping[str, Any] | None = None,
    title: str = "Dagger pruning report",
    logit_trace: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Writes report.md, gates.png and gate_histograms.png into ``out_dir``; returns the markdown path.

    ``info`` is the exact-target record (``prune.exact_target``); ``metrics`` optional extras such as
    accuracies ({"pretrained accuracy": 0.91, ...}) shown in the summary table; ``logit_trace`` the
    gate trainer's per-group mean logits at its first steps (``GateTrainer.logit_trace``), a table.
    """
    from cafe_tf.dagger.prune import kept_ratios

    rows = kept_ratios(graph, selection)
    by_name = {graph.groups[gid].name: v for gid, v in (logits or {}).items()}
    png = render_overview(rows, by_name or None, history, float(info["target_ratio"]))
    io.write_bytes(os.path.join(out_dir, "gates.png"), png)
    if by_name:
        io.write_bytes(os.path.join(out_dir, "gate_histograms.png"), render_group_histograms(by_name))
    lines = [f"# {title}", "", f"_{DESIGN_NOTE}_", "", "| quantity | value |", "|---|---|"]
    summary = [
        ("method", info.get("method", "–")),
        ("target MACs", f"{_fmt_int(info['target_macs'])} ({info['target_ratio']:.4f} of full)"),
        ("achieved MACs", f"{_fmt_int(info['achieved_macs'])} ({info['achieved_ratio']:.4f} of full)"),
        ("relative error vs target", f"{info['relative_error']:+.3%}"),
        ("full MACs", _fmt_int(info["full_macs"])),
        ("params after pruning", _fmt_int(info.get("params", 0))),
        ("MACs of the open gates (before exact-target)", _fmt_int(info.get("initial_macs", 0))),
        ("filters removed / added by the exact-target step",
         f"{info.get('removed_by_greedy', 0)} / {info.get('added_by_greedy', 0)}"),
        ("channel multiple (kept widths: multiples of it, or full)", str(info.get("channel_multiple", 1))),
    ]
    for k, v in (metrics or {}).items():
        summary.append((k, f"{v:.4f}" if isinstance(v, float) else str(v)))
    lines += [f"| {k} | {v} |" for k, v in summary]
    lines += ["", "![overview](gates.png)", ""]
    if by_name:
        lines += ["![per-group gate histograms](gate_histograms.png)", ""]
    lines += ["## Kept channels per group", "",
              "| group | layers | channels | kept | kept ratio | mean gate |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        gate = by_name.get(r["group"])
        mean_gate = f"{_sigmoid(np.asarray(gate)).mean():.3f}" if gate is not None else "–"
        lines.append(f"| {r['group']} | {', '.join(r['layers'])} | {r['size']} | {r['kept']} | {r['ratio']:.3f} | "
                     f"{mean_gate} |")
    lines += logit_trace_table(logit_trace or [])
    path = os.path.join(out_dir, "report.md")
    io.write_text(path, "\n".join(lines) + "\n")
    return path
