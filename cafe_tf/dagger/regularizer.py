"""The FLOPs-aware regulariser: ``lambda * R(F(g) / F_target)``.

``F(g)`` is the MACs of the gated network, evaluated by ``CostModel.macs_tf`` (the same polynomial
as ``cafe_tf.flops``, so there is one FLOPs formula in the project) at the group widths
``w_g = sum of the group's gates`` (``module.gate_masks``); ungated groups count at full size. A
convolution's cost is ``k^2 H W w_in w_out``, so a gate gets gradient from the layer it prunes and
from every layer it feeds. At hard 0/1 gates ``F`` equals ``CostModel.macs`` of the open channels.

Penalties ``R(x)``, ``x = F / F_target`` (the options and the DMCP-style band are **our design**;
the paper's method section was not available to us):

* ``abs`` (default): ``|x - 1|``.
* ``squared``: ``(x - 1)^2``.
* ``hinge``: ``max(0, x - 1)``, one-sided: only an over-budget network is pushed.
* ``log_l1``: ``max(0, |log x| - log(1 + tolerance))``, zero inside a ``tolerance`` band (5%) and
  L1 in log space outside it, our reading of the FLOPs loss of DMCP (same research group).

The term depends on the gates only, not on the batch: under ``tf.distribute`` every replica computes
the same value, and the gate loop (``train.py``) scales it by ``1 / replicas`` so that it counts
once in the all-reduced gradient.
"""

from __future__ import annotations

import tensorflow as tf

from cafe_tf.flops import CostModel

PENALTIES = ("abs", "squared", "hinge", "log_l1")


def penalty(x: tf.Tensor, kind: str = "abs", tolerance: float = 0.05) -> tf.Tensor:
    """``R(x)`` for the MACs ratio ``x = F / F_target`` (see the module docstring)."""
    if kind == "abs":
        return tf.abs(x - 1.0)
    if kind == "squared":
        return tf.square(x - 1.0)
    if kind == "hinge":
        return tf.nn.relu(x - 1.0)
    if kind == "log_l1":
        return tf.nn.relu(tf.abs(tf.math.log(tf.maximum(x, 1e-12))) - tf.math.log(1.0 + tolerance))
    raise ValueError(f"FLOPs penalty {kind!r} is not one of {PENALTIES}")


class FlopsRegularizer:
    """``weight * R(macs_tf(widths) / target_macs)``; call it on the float widths of every group."""

    def __init__(self, cost: CostModel, target_macs: float, kind: str = "abs", weight: float = 1.0,
                 tolerance: float = 0.05):
        if kind not in PENALTIES:
            raise ValueError(f"FLOPs penalty {kind!r} is not one of {PENALTIES}")
        if not target_macs > 0:
            raise ValueError(f"target_macs must be > 0, got {target_macs!r}")
        if weight < 0:
            raise ValueError(f"the FLOPs term's weight must be >= 0 (0 switches it off), got {weight!r}")
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self.cost, self.target_macs, self.kind = cost, float(target_macs), kind
        self.weight, self.tolerance = float(weight), float(tolerance)

    def macs(self, widths: tf.Tensor) -> tf.Tensor:
        """Differentiable MACs at float group widths (shape (G,))."""
        return self.cost.macs_tf(widths)

    def __call__(self, widths: tf.Tensor, target_macs: float | tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """(weighted penalty, MACs) at float group widths; ``target_macs`` (default: the regulariser's)
        is the target of this step, for a target that moves during training (``train.target_at``)."""
        macs = self.macs(widths)
        target = self.target_macs if target_macs is None else target_macs
        return self.weight * penalty(macs / target, self.kind, self.tolerance), macs
