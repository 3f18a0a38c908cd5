"""Is my model supported? One call that says so, and how the engine will treat it.

``check(model)`` builds the channel graph, lists the coupled channel groups (which are prunable, and
why the others are not) and the layers treated as fixed-width boundaries, and cross-checks the
analytic MACs of a random sub-network against a per-layer count of the extracted Keras model. An
unsupported model gets the graph's error (the layer, its type and the two ways out) instead.

Example::

    from cafe_tf.check import check
    report = check(keras.applications.MobileNetV3Small(input_shape=(96, 96, 3), weights=None))
    print(report.summary())          # report.supported, report.groups, report.boundaries, ...

Command line: ``python -m cafe_tf.check --model my_model.keras [--boundaries name1,name2]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from cafe_tf.graph import ChannelGraph, UnsupportedModelError


@dataclasses.dataclass
class CheckReport:
    """What :func:`check` found."""

    model: str
    supported: bool
    error: str = ""
    groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    boundaries: list[str] = dataclasses.field(default_factory=list)
    layer_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    macs: int = 0
    params: int = 0
    sample_macs: int = 0  # analytic MACs of the random sub-network
    sample_macs_counted: int = 0  # the same, counted layer by layer on the extracted model
    sample_params: int = 0
    sample_params_counted: int = 0

    @property
    def consistent(self) -> bool:
        return self.supported and self.sample_macs == self.sample_macs_counted and (
            self.sample_params == self.sample_params_counted)

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), consistent=self.consistent)

    def summary(self) -> str:
        if not self.supported:
            return f"model {self.model!r}: NOT supported\n{self.error}"
        prunable = [g for g in self.groups if g["prunable"]]
        lines = [
            f"model {self.model!r}: supported; {len(self.groups)} channel groups, {len(prunable)} prunable; "
            f"{self.macs:,} MACs, {self.params:,} params",
            f"random sub-network: {self.sample_macs:,} MACs analytic vs {self.sample_macs_counted:,} counted "
            f"per layer, {self.sample_params:,} vs {self.sample_params_counted:,} params: "
            f"{'consistent' if self.consistent else 'INCONSISTENT'}",
            "layer kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(self.layer_kinds.items())),
        ]
        if self.boundaries:
            lines.append("fixed-width boundaries: " + ", ".join(self.boundaries))
        lines.append(f"{'id':>4}  {'group':<40} {'size':>5}  prunable  reason / producers")
        for g in self.groups:
            why = g["reason"] or ", ".join(g["producers"][:4]) + (" ..." if len(g["producers"]) > 4 else "")
            lines.append(f"{g['id']:>4}  {g['name'][:40]:<40} {g['size']:>5}  {str(g['prunable']):<8}  {why}")
        return "\n".join(lines)


def check(model: keras.Model, boundaries: Iterable[Any] = (), seed: int = 0) -> CheckReport:
    """Whether ``model`` is supported, its groups and boundaries, and a MACs cross-check of a random
    extraction (each prunable group keeps a random 30-100% of its channels)."""
    from cafe_tf import surgery
    from cafe_tf.flops import CostModel, count_keras_model

    name = getattr(model, "name", type(model).__name__)
    try:
        graph = ChannelGraph.from_model(model, boundaries=boundaries)
        cost = CostModel(graph)
    except (UnsupportedModelError, ValueError) as e:
        return CheckReport(name, False, error=str(e))
    report = CheckReport(name, True, macs=cost.macs(), params=cost.params())
    report.groups = [
        {"id": g.id, "name": g.name, "size": g.size, "prunable": g.prunable, "reason": g.reason,
         "producers": list(g.producers)}
        for g in graph.groups
    ]
    report.boundaries = [n.name for n in graph.nodes if n.boundary]
    for n in graph.nodes:
        report.layer_kinds[n.kind] = report.layer_kinds.get(n.kind, 0) + 1
    rng = np.random.default_rng(seed)
    selection = {
        g.id: np.sort(rng.choice(g.size, max(1, int(round(g.size * rng.uniform(0.3, 1.0)))), replace=False))
        for g in graph.prunable_groups
    }
    widths = cost.widths_of(selection)
    report.sample_macs, report.sample_params = int(cost.macs(widths)), int(cost.params(widths))
    counted = count_keras_model(surgery.extract(graph.model, selection, graph=graph))
    report.sample_macs_counted, report.sample_params_counted = counted["macs"], counted["params"]
    return report


if __name__ == "__main__":  # the command line lives in cafe_tf/cli/check.py
    import runpy

    runpy.run_module("cafe_tf.cli.check", run_name="__main__", alter_sys=True)
