"""Run reports: a markdown page and a PNG figure for a pipeline run.

The figure has three panels: validation score against MACs of every candidate the search evaluated,
with the Pareto front, the chosen network and the baselines; per-group widths of the chosen
network against the full one; and final accuracy against MACs for the retrained networks. The
markdown page holds the per-stage table (MACs, params, accuracy, latency, size) and links the PNG.
"""

from __future__ import annotations

import io as _io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cafe_tf import io


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, score) points no other point beats on both (lower cost, higher score), by cost."""
    front, best = [], -np.inf
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if score > best:
            front.append((cost, score))
            best = score
    return front


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure (laid out tight), which is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    if isinstance(value, int) and abs(value) >= 10_000:
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= div:
                return f"{value / div:.3g}{suffix}{unit}"
    return f"{value}{unit}"


PARITY_HEADER = ("| format | size (KB) | images | top-1 agreement | max abs diff | mean abs diff | Keras accuracy "
                 "| TFLite accuracy | drop (pt) | check | passed |")


def parity_row(record: Mapping[str, Any]) -> str:
    """One markdown row of :data:`PARITY_HEADER` for a ``deploy.verify`` record (plus ``format``, ``size_kb``)."""
    drop = record.get("accuracy_drop_pt")
    passed = record.get("passed")
    cells = [record.get("format") or record.get("quant"), _fmt(record.get("size_kb")), _fmt(record.get("num_images")),
             _fmt(record.get("top1_agreement")), _fmt(record.get("max_abs_diff")), _fmt(record.get("mean_abs_diff")),
             _fmt(record.get("keras_accuracy")), _fmt(record.get("tflite_accuracy")),
             "–" if drop is None else f"{drop:+.2f}", f"`{record['criterion']}`" if record.get("criterion") else "–",
             "–" if passed is None else ("yes" if passed else "no")]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_figure(
    candidates: Sequence[Mapping[str, float]],
    chosen: Mapping[str, Any] | None,
    baselines: Sequence[Mapping[str, Any]] = (),
    groups: Sequence[Mapping[str, Any]] = (),
    finals: Sequence[Mapping[str, Any]] = (),
    budget_macs: float | None = None,
) -> bytes:
    """PNG bytes of the report figure (see module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + bool(finals)
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.6))
    ax = axes[0]
    if candidates:
        macs = np.array([c["macs"] for c in candidates]) / 1e6
        score = np.array([c["score"] for c in candidates])
        ax.scatter(macs, score, s=10, alpha=0.45, color="tab:gray", label="evaluated candidates")
        front = pareto_front(list(zip(macs, score)))
        ax.plot([p[0] for p in front], [p[1] for p in front], "-o", ms=3, color="tab:blue", label="Pareto front")
    for b in baselines:
        if b.get("score") is not None:
            ax.scatter([b["macs"] / 1e6], [b["score"]], marker="s", s=50, label=b["name"])
    if chosen is not None and chosen.get("score") is not None:
        ax.scatter([chosen["macs"] / 1e6], [chosen["score"]], marker="*", s=220, color="tab:red", zorder=5,
                   label="chosen")
    if budget_macs:
        ax.axvline(budget_macs / 1e6, ls="--", color="tab:red", lw=1, label="budget")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("supernet validation accuracy")
    ax.set_title("Search: score vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[1]
    if groups:
        x = np.arange(len(groups))
        ax.bar(x, [g["size"] for g in groups], color="lightgray", label="full")
        ax.bar(x, [g["width"] for g in groups], color="tab:blue", label="chosen")
        ax.set_xticks(x)
        ax.set_xticklabels([g["name"] for g in groups], rotation=75, fontsize=6, ha="right")
        ax.legend(fontsize=8)
    ax.set_ylabel("channels")
    ax.set_title("Per-group width")

    if finals:
        ax = axes[2]
        for f in finals:
            if f.get("accuracy") is not None:
                ax.scatter([f["macs"] / 1e6], [f["accuracy"]], s=60, label=f["name"])
                ax.annotate(f["name"], (f["macs"] / 1e6, f["accuracy"]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        ax.set_xlabel("MACs (M)")
        ax.set_ylabel("test accuracy")
        ax.set_title("Retrained networks")
        ax.grid(alpha=0.3)
    return figure_png(fig)


def write_report(
    workdir: str | os.PathLike,
    title: str,
    stages: Sequence[Mapping[str, Any]],
    candidates: Sequence[Mapping[str, float]] = (),
    chosen: Mapping[str, Any] | None = None,
    baselines: Sequence[Mapping[str, Any]] = (),
    groups: Sequence[Mapping[str, Any]] = (),
    finals: Sequence[Mapping[str, Any]] = (),
    budget_macs: float | None = None,
    notes: Sequence[str] = (),
    formats: Sequence[Mapping[str, Any]] = (),
    format_choice: Sequence[str] = (),
    environment: Mapping[str, Any] | None = None,
    parity: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Writes ``report.md`` and ``report.png`` into ``workdir``; returns the markdown path.

    ``stages`` rows may hold: stage, artifact, macs, params, accuracy, latency_ms, size_kb, seconds.
    ``formats`` rows (the deploy formats side by side) hold format, latency_ms, size_kb, accuracy,
    drop_pt, agreement, within (the tolerance) and chosen; ``format_choice`` says why one was picked,
    ``environment`` (benchmark.json's) names the CPU they were timed on. ``parity`` rows are
    ``deploy.verify`` records (``verify.json``) with ``format`` and ``size_kb`` added, one table row each.
    """
    workdir = os.fspath(workdir)
    png = render_figure(candidates, chosen, baselines, groups, finals, budget_macs)
    io.write_bytes(os.path.join(workdir, "report.png"), png)
    cols = [("stage", "stage", ""), ("MACs", "macs", ""), ("params", "params", ""),
            ("accuracy", "accuracy", ""), ("latency (ms)", "latency_ms", ""), ("size (KB)", "size_kb", ""),
            ("time (s)", "seconds", ""), ("artifact", "artifact", "")]
    lines = [f"# {title}", "", "![report](report.png)", "", "| " + " | ".join(c[0] for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for row in stages:
        cells = []
        for _, key, unit in cols:
            v = row.get(key)
            cells.append(f"`{v}`" if key == "artifact" and v else _fmt(v, unit))
        lines.append("| " + " | ".join(cells) + " |")
    if chosen is not None:
        lines += ["", f"Chosen network: {_fmt(chosen.get('macs'))} MACs, {_fmt(chosen.get('params'))} params, "
                      f"supernet validation score {_fmt(chosen.get('score'))}."]
    if baselines:
        lines += ["", "| baseline | MACs | score |", "|---|---|---|"]
        lines += [f"| {b['name']} | {_fmt(b.get('macs'))} | {_fmt(b.get('score'))} |" for b in baselines]
    if groups:
        lines += ["", "| group | full | chosen | kept |", "|---|---|---|---|"]
        lines += [f"| {g['name']} | {g['size']} | {g['width']} | {g['width'] / g['size']:.0%} |" for g in groups]
    if formats:
        lines += ["", "## Deploy formats", "",
                  "| format | latency p50 (ms) | size (KB) | accuracy | drop (pt) | top-1 agreement | within tolerance |",
                  "|---|---|---|---|---|---|---|"]
        for f in formats:
            name = f"**{f['format']}** (recommended)" if f.get("chosen") else f["format"]
            drop = None if f.get("drop_pt") is None else f"{f['drop_pt']:+.2f}"
            lines.append(f"| {name} | {_fmt(f.get('latency_ms'))} | {_fmt(f.get('size_kb'))} | "
                         f"{_fmt(f.get('accuracy'))} | {drop or '–'} | {_fmt(f.get('agreement'))} | "
                         f"{'yes' if f.get('within') else 'no'} |")
        if environment:
            features = [k for k, v in (environment.get("cpu_features") or {}).items() if v]
            lines += ["", f"Timed on {environment.get('cpu') or 'an unnamed CPU'} ({environment.get('machine', '?')}; "
                          f"SIMD / dot-product features: {', '.join(features) or 'none of those checked'}), "
                          "LiteRT with XNNPACK, formats interleaved round by round."]
        for sentence in format_choice:
            lines += ["", sentence]
    if parity:
        lines += ["", "## Parity with Keras", "", PARITY_HEADER, "|" + "---|" * PARITY_HEADER.count(" | ") + "---|"]
        lines += [parity_row(v) for v in parity]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    path = os.path.join(workdir, "report.md")
    io.write_text(path, "\n".join(lines) + "\n")
    return path
