"""The Dagger module: a small network that reads a pretrained model's weights and gates its filters.

:class:`DaggerModule` scores every channel of every prunable group from the filters that produce it
(a projection per source layer, a trunk shared by all groups, a learned bias per group);
:class:`FreeGates` is the ablation with one free logit per channel. ``gates_from_logits`` and
``gate_masks`` turn logits into hard (straight-through) or soft gates and the masks a ``Supernet``
takes. The architecture is our design, not the paper's: see docs/papers.md.

Example::

    graph = ChannelGraph.from_model(pretrained)       # pretrained built / loaded in strategy.scope()
    dagger = DaggerModule(graph, hidden=32)            # in the same scope
    masks, widths = gate_masks(graph, dagger.group_ids, gates_from_logits(dagger.logits()))
    out = Supernet(pretrained, graph)(images, masks=masks, training=True)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph

NORMALIZATIONS = ("layer_std", "l2_rows")
GATE_MODES = ("hard", "soft")
# How the head starts: all logits of a group equal (zeros), a seeded small random head, or a fixed
# per-filter offset from the filters' L1 norms (the stronger filter starts higher).
HEAD_INITS = ("zeros", "random", "l1")
# How fast each group's logits move: as the optimiser makes them (none), or scaled per group by the
# MACs of one of its channels (macs), the weighting the FLOPs regulariser's gradient carries.
STEP_SCALINGS = ("none", "macs")


class _Source:
    """One layer whose per-channel weights describe a group's channels."""

    def __init__(self, graph: ChannelGraph, name: str, use_bn: bool):
        node = graph.node_by_name[name]
        self.name, self.rule, self.layer = name, node.rule, node.layer
        self.bn = _following_bn(graph, name) if use_bn else None
        self.width = int(self.rule.filter_matrix(self.layer).shape[1]) + int(self.bn is not None)

    def rows(self, normalize: str) -> tf.Tensor:
        """(channels, width) float32 feature rows, normalised, without gradient."""
        rows = self.rule.filter_matrix(self.layer)
        if normalize == "layer_std":
            rows = rows / (tf.math.reduce_std(rows) + 1e-8)
        else:
            rows = tf.math.l2_normalize(rows, axis=1)
        if self.bn is not None:
            bn = self.bn
            gamma = tf.abs(tf.cast(tf.convert_to_tensor(bn.gamma), tf.float32)) if bn.scale else 1.0
            scale = gamma / tf.sqrt(tf.cast(tf.convert_to_tensor(bn.moving_variance), tf.float32) + bn.epsilon)
            scale = scale * tf.ones([tf.shape(rows)[0]])
            scale = scale / (tf.reduce_mean(scale) + 1e-8)
            rows = tf.concat([rows, scale[:, None]], axis=1)
        return tf.stop_gradient(rows)


def _following_bn(graph: ChannelGraph, name: str) -> keras.layers.BatchNormalization | None:
    """The BatchNormalization that reads ``name``'s output directly, if any."""
    for node in graph.nodes:
        if node.kind == "bn" and node.inputs == (name,):  # BatchNormalization read straight off the layer
            return node.layer
    return None


def _standardised_log_l1(graph: ChannelGraph) -> dict[int, np.ndarray]:
    """{prunable group id: per-channel log L1 norm (``prune.filter_l1_norms``), standardised within
    the group (zero where every filter has the same norm)}."""
    from cafe_tf.dagger.prune import filter_l1_norms

    out = {}
    for gid, l1 in filter_l1_norms(graph).items():
        z = np.log(l1 + 1e-12)
        spread = z.std()
        out[gid] = (z - z.mean()) / spread if spread > 1e-12 else np.zeros_like(z)
    return out


def _group_sources(graph: ChannelGraph) -> dict[int, list[str]]:
    """{prunable group id: names of the layers with one filter per channel of it (producers,
    depthwise)}, graph order."""
    out: dict[int, list[str]] = {g.id: [] for g in graph.prunable_groups}
    for node in graph.nodes:
        if node.rule is not None and node.rule.filtered and len(node.out_space.segments) == 1:
            gid = node.out_space.segments[0][0]
            if gid in out:
                out[gid].append(node.name)
    return out


class GateModule(keras.layers.Layer):
    """Base of the gate generators: one logit per channel of every prunable group."""

    def __init__(self, graph: ChannelGraph, **kwargs):
        super().__init__(**kwargs)
        if not graph.prunable_groups:
            reasons = sorted({f"{g.name}: {g.reason}" for g in graph.groups})
            raise ValueError(
                f"model {graph.model.name!r} has no prunable channel group, nothing to gate "
                f"(groups and why they are fixed: {reasons})"
            )
        self.graph = graph
        self.group_ids = [g.id for g in graph.prunable_groups]
        self.group_sizes = [g.size for g in graph.prunable_groups]

    def logits(self) -> list[tf.Tensor]:
        """One float32 logit vector (size of the group) per prunable group, in ``group_ids`` order."""
        raise NotImplementedError

    def call(self, inputs=None):  # keras wants a call; the gates do not depend on any input
        return self.logits()


class DaggerModule(GateModule):
    """Per-filter gate logits computed from the pretrained weights (see the module docstring)."""

    def __init__(self, graph: ChannelGraph, hidden: int = 32, normalize: str = "layer_std", use_bn: bool = True,
                 init_logit: float = 3.0, seed: int = 0, group_bias: bool = True, head_init: str = "zeros",
                 head_init_scale: float = 0.5, step_scaling: str = "none", **kwargs):
        """``group_bias=False``: no learned offset per group and no bias in the per-layer projections,
        one shared bias instead, so a filter's logit comes from its weights alone (an ablation).

        ``head_init``: ``zeros`` (every logit of a group starts at ``init_logit``), ``random`` (the head's
        kernel drawn from N(0, (head_init_scale / sqrt(hidden))^2), seeded) or ``l1`` (a fixed, untrained
        per-filter offset ``head_init_scale * z``, z = the filter's log L1 norm standardised within its
        group, so the logits start in the filters' L1 order).

        ``step_scaling="macs"``: each group's logits are ``s_g * (head + bias)`` with ``s_g`` = the MACs of
        one channel of the group (``CostModel.marginal_macs`` at full width) over their mean, the bias
        starting at ``init_logit / s_g``; whatever step the optimiser takes on the shared parameters, a
        group's logits then move in proportion to the MACs one of its channels costs, as the FLOPs
        regulariser's gradient weights them (Adam alone moves every group's logits at about one speed)."""
        super().__init__(graph, name=kwargs.pop("name", "dagger"), **kwargs)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZATIONS}")
        if hidden < 1:
            raise ValueError(f"hidden (width of the Dagger MLP) must be >= 1, got {hidden}")
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init={head_init!r} is not one of {HEAD_INITS}")
        if not head_init_scale >= 0:
            raise ValueError(f"head_init_scale must be >= 0, got {head_init_scale!r}")
        if step_scaling not in STEP_SCALINGS:
            raise ValueError(f"step_scaling={step_scaling!r} is not one of {STEP_SCALINGS}")
        self.head_init, self.step_scaling = head_init, step_scaling
        self.hidden, self.normalize, self.init_logit = int(hidden), normalize, float(init_logit)
        self.per_group_bias = bool(group_bias)
        sources = _group_sources(graph)
        self._sources = {gid: [_Source(graph, n, use_bn) for n in sources[gid]] for gid in self.group_ids}
        empty = [graph.groups[gid].name for gid, s in self._sources.items() if not s]
        if empty:
            raise ValueError(f"prunable groups {empty} have no conv/dense/depthwise layer to read weights from")
        init = lambda i: keras.initializers.GlorotUniform(seed=seed + i)  # noqa: E731
        names = [s.name for ss in self._sources.values() for s in ss]
        widths = {s.name: s.width for ss in self._sources.values() for s in ss}
        self._projection_index = {name: i for i, name in enumerate(names)}
        self.projections = []  # a list, so variables are tracked in graph order
        for i, name in enumerate(names):
            dense = keras.layers.Dense(self.hidden, activation="relu", kernel_initializer=init(i),
                                       use_bias=self.per_group_bias, name=f"proj_{name}")
            dense.build((None, widths[name]))
            self.projections.append(dense)
        self.trunk = keras.layers.Dense(self.hidden, activation="relu", kernel_initializer=init(len(names)),
                                        name="trunk")
        self.trunk.build((None, self.hidden))
        head_kernel = (keras.initializers.RandomNormal(stddev=head_init_scale / np.sqrt(self.hidden),
                                                       seed=seed + len(names) + 1)
                       if head_init == "random" else "zeros")
        self.head = keras.layers.Dense(1, kernel_initializer=head_kernel, use_bias=False, name="head")
        self.head.build((None, self.hidden))
        sizes = [graph.groups[gid].size for gid in self.group_ids]
        scales = np.ones(len(self.group_ids), np.float32)
        if step_scaling == "macs":
            marginal = CostModel(graph).marginal_macs()[self.group_ids].astype(np.float64)
            scales = (marginal / marginal.mean()).astype(np.float32)
        # Constants of the module (not trained): per-channel logit scale and starting offset.
        self._scales = tf.constant(np.repeat(scales, sizes))
        bias_init = self.init_logit / scales if self.per_group_bias else np.full(1, self.init_logit, np.float32)
        offset = np.zeros(sum(sizes), np.float32)
        if head_init == "l1":
            z = _standardised_log_l1(graph)
            offset = head_init_scale * np.concatenate([z[gid] for gid in self.group_ids])
        self._offset = tf.constant(offset.astype(np.float32))
        self.group_bias = self.add_weight(name="group_bias" if self.per_group_bias else "shared_bias",
                                          shape=(len(self.group_ids) if self.per_group_bias else 1,),
                                          initializer=keras.initializers.Constant(np.asarray(bias_init, np.float32)))
        self.built = True

    def source_names(self, group_id: int) -> list[str]:
        """Layers whose weights feed the gates of ``group_id``."""
        return [s.name for s in self._sources[group_id]]

    def logits(self) -> list[tf.Tensor]:
        feats, sizes = [], []
        for gid in self.group_ids:
            per_source = [self.projections[self._projection_index[s.name]](s.rows(self.normalize))
                          for s in self._sources[gid]]
            feats.append(per_source[0] if len(per_source) == 1 else tf.add_n(per_source) / len(per_source))
            sizes.append(self.graph.groups[gid].size)
        # One trunk pass over every channel of every group (one matmul instead of one per group).
        scores = self.head(self.trunk(tf.concat(feats, axis=0)))[:, 0]
        if not self.per_group_bias:
            bias = self.group_bias[0]
        else:
            bias = tf.repeat(tf.convert_to_tensor(self.group_bias), sizes)
        return list(tf.split(self._scales * (scores + bias) + self._offset, sizes))


class FreeGates(GateModule):
    """Ablation: one free trainable logit per channel (no reading of the weights)."""

    def __init__(self, graph: ChannelGraph, init_logit: float = 3.0, **kwargs):
        super().__init__(graph, name=kwargs.pop("name", "free_gates"), **kwargs)
        self.init_logit = float(init_logit)
        self.free_logits = [
            self.add_weight(name=f"logits_{graph.groups[gid].name}", shape=(size,),
                            initializer=keras.initializers.Constant(self.init_logit))
            for gid, size in zip(self.group_ids, self.group_sizes)
        ]
        self.built = True

    def logits(self) -> list[tf.Tensor]:
        return [tf.convert_to_tensor(v) for v in self.free_logits]


def build_gate_module(graph: ChannelGraph, kind: str = "dagger", **kwargs) -> GateModule:
    """``DaggerModule`` (kind="dagger") or the ``FreeGates`` ablation (kind="free")."""
    if kind == "dagger":
        return DaggerModule(graph, **kwargs)
    if kind == "free":
        return FreeGates(graph, init_logit=kwargs.get("init_logit", 3.0))
    raise ValueError(f"gate module kind {kind!r} is not one of ('dagger', 'free')")


def gates_from_logits(logits: Sequence[tf.Tensor], mode: str = "hard", temperature: float | tf.Tensor = 1.0,
                      min_open: Sequence[int] | None = None) -> list[tf.Tensor]:
    """Gate values per group: hard 0/1 with a straight-through gradient, or soft ``sigmoid(logit/T)``.

    ``min_open`` (one count per group): the group's highest-logit gates are held fully open up to that
    count (straight-through: their gradient is the sigmoid's), the floor the exact-target step keeps
    (``prune.group_floor``)."""
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode {mode!r} is not one of {GATE_MODES}")
    if min_open is not None and len(min_open) != len(logits):
        raise ValueError(f"min_open has {len(min_open)} counts for {len(logits)} groups")
    out = []
    for i, logit in enumerate(logits):
        p = tf.sigmoid(logit / temperature)
        # Threshold on the logit, not on p: p rounds to exactly 0.5 in float32 only at logit 0.
        value = tf.cast(logit > 0, p.dtype) if mode == "hard" else p
        if min_open is not None and min_open[i] > 0:
            kth = tf.math.top_k(logit, k=int(min_open[i]), sorted=True).values[-1]
            value = tf.maximum(value, tf.cast(logit >= kth, p.dtype))
        out.append(p + tf.stop_gradient(value - p) if (mode == "hard" or min_open is not None) else p)
    return out


def gate_masks(graph: ChannelGraph, group_ids: Sequence[int], gates: Sequence[tf.Tensor]
               ) -> tuple[list[tf.Tensor | None], tf.Tensor]:
    """(Supernet masks over all groups, float widths (G,)): width = sum of a group's gates.

    Groups without gates keep their full size, so ``CostModel.macs_tf(widths)`` counts them as the
    constant cost of the unprunable layers.
    """
    masks: list[tf.Tensor | None] = [None] * len(graph.groups)
    widths = [tf.constant(float(g.size)) for g in graph.groups]
    for gid, g in zip(group_ids, gates):
        masks[gid] = g
        widths[gid] = tf.reduce_sum(g)
    return masks, tf.stack(widths)


def hard_selection(graph: ChannelGraph, group_ids: Sequence[int], logits: Sequence[np.ndarray]
                   ) -> dict[int, np.ndarray]:
    """Channels whose gate is open (logit > 0), per group; a group may come out empty."""
    return {gid: np.flatnonzero(np.asarray(l) > 0) for gid, l in zip(group_ids, logits)}
