"""Analytic multiply-accumulates (MACs) and parameter counts of any width assignment.

Papers write "FLOPs" for what are multiply-accumulates; cafe-tf says **MACs** and reports
``flops = 2 * macs`` only where asked. Counted: convolutions (plain, grouped, depthwise, separable)
and Dense (the convention of ResNet/MobileNet/EfficientNet papers); normalisations, activations,
pooling and adds count 0 MACs. Parameters count every stored weight (kernels, biases, BN
gamma/beta/mean/variance), as Keras' ``count_params`` does. Each layer's terms come from its rule in
``cafe_tf.layers``, and are checked at full width against the MACs its own weights give.

Every count is a polynomial in the group widths ``w`` (``cafe_tf.graph``)::

    macs(w) = sum_t coef_t * w[a_t] * w[b_t]      (w[G] = 1 stands for a constant)

so it costs a gather and a dot product: ~10 µs for one assignment, and batches of assignments are
one matrix product. The same polynomial evaluated on TensorFlow tensors is differentiable (Dagger's
FLOPs regulariser uses it), so there is one FLOPs formula in the project.

Command line (prints one JSON object; cafe_tf/cli/flops.py)::

    python -m cafe_tf.flops --model resnet56
    python -m cafe_tf.flops --model mobilenet_v2 --input_size 160 --width_mult 0.75
    python -m cafe_tf.flops --model resnet20 --widths runs/demo/widths.json
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import keras
import numpy as np

from cafe_tf import layers as rules
from cafe_tf.graph import ChannelGraph, LayerNode, flatten_model
from cafe_tf.layers import RuleError


@dataclasses.dataclass(frozen=True)
class _Poly:
    coef: np.ndarray  # (T,) float64
    a: np.ndarray  # (T,) int64, index into the extended widths (G = constant 1)
    b: np.ndarray


class CostModel:
    """MACs and parameters of a model's sub-networks as functions of its group widths."""

    def __init__(self, graph: ChannelGraph):
        self.graph = graph
        self.num_groups = len(graph.groups)
        macs_terms: list[tuple[float, int, int]] = []
        param_terms: list[tuple[float, int, int]] = []
        self.layer_terms: dict[str, tuple[list, list]] = {}
        full = np.append(graph.full_widths(), 1)
        for node in graph.nodes:
            m, p = _node_terms(node, self.num_groups)
            _check_terms(node, m, full)
            macs_terms += m
            param_terms += p
            self.layer_terms[node.name] = (m, p)
        self._macs = _compile(macs_terms)
        self._params = _compile(param_terms)
        self.full_widths = graph.full_widths()

    # ----------------------------------------------------------------------------------------
    def _extend(self, widths):
        widths = np.asarray(widths, dtype=np.float64)
        if widths.shape[-1] != self.num_groups:
            raise ValueError(f"widths has {widths.shape[-1]} entries; the model has {self.num_groups} groups")
        ones = np.ones(widths.shape[:-1] + (1,))
        return np.concatenate([widths, ones], axis=-1)

    @staticmethod
    def _eval(poly: _Poly, w_ext: np.ndarray) -> np.ndarray:
        return (w_ext[..., poly.a] * w_ext[..., poly.b]) @ poly.coef

    def macs(self, widths: np.ndarray | None = None) -> int | np.ndarray:
        """MACs at ``widths`` (one width per group, by group id; full model if None). Batched on axis 0."""
        w = self.full_widths if widths is None else widths
        out = self._eval(self._macs, self._extend(w))
        return int(round(float(out))) if np.ndim(out) == 0 else np.rint(out).astype(np.int64)

    def params(self, widths: np.ndarray | None = None) -> int | np.ndarray:
        """Parameter count at ``widths``; same conventions as :meth:`macs`."""
        w = self.full_widths if widths is None else widths
        out = self._eval(self._params, self._extend(w))
        return int(round(float(out))) if np.ndim(out) == 0 else np.rint(out).astype(np.int64)

    def macs_tf(self, widths):
        """Differentiable MACs of float ``widths`` (a tf tensor of shape (G,)): for gates and bins."""
        import tensorflow as tf

        widths = tf.cast(widths, tf.float32)
        w_ext = tf.concat([widths, tf.ones([1], tf.float32)], axis=0)
        terms = tf.gather(w_ext, self._macs.a) * tf.gather(w_ext, self._macs.b)
        return tf.reduce_sum(terms * tf.constant(self._macs.coef, tf.float32))

    def marginal_macs(self, widths: np.ndarray | None = None) -> np.ndarray:
        """d MACs / d w_g for every group at ``widths`` (full model if None): the cost of one channel."""
        w = self._extend(self.full_widths if widths is None else widths)
        grad = np.zeros(self.num_groups + 1)
        poly = self._macs
        np.add.at(grad, poly.a, poly.coef * w[poly.b])
        np.add.at(grad, poly.b, poly.coef * w[poly.a])
        return grad[: self.num_groups]

    def widths_of(self, selection: Mapping[int, np.ndarray]) -> np.ndarray:
        """Group widths (all groups, by id) of a channel selection {group id: indices}."""
        w = self.full_widths.copy()
        for g, idx in selection.items():
            w[self.graph.group(g).id] = len(idx)
        return w


def _node_terms(node: LayerNode, const: int) -> tuple[list, list]:
    """(MACs terms, params terms) of one layer, from its rule; each term is (coef, group a, group b)."""
    if node.rule is None:  # the model input
        return [], []
    return node.rule.terms(node, const)


def _check_terms(node: LayerNode, macs_terms: list, full: np.ndarray) -> None:
    """The rule's MAC terms at full width must equal the MACs read off the built layer."""
    if node.rule is None or node.kind == "boundary":
        return
    poly = sum(c * full[a] * full[b] for c, a, b in macs_terms)
    direct = node.rule.layer_macs(node.layer, node.in_shapes, node.out_shape)
    if int(round(poly)) != int(direct):
        raise RuleError(
            f"the rule {type(node.rule).__name__} of layer {node.name!r} ({type(node.layer).__name__}) gives "
            f"{int(round(poly))} MACs at full width, but its weights give {int(direct)}; fix the rule's terms() "
            "or layer_macs() (cafe_tf.layers)"
        )


def _compile(terms: list[tuple[float, int, int]]) -> _Poly:
    if not terms:
        return _Poly(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    coef, a, b = zip(*terms)
    return _Poly(np.asarray(coef, np.float64), np.asarray(a, np.int64), np.asarray(b, np.int64))


def count_keras_model(model: keras.Model) -> dict[str, int]:
    """MACs and params read off a built Keras model's layers, one layer at a time (each rule's
    ``layer_macs`` from the kernel shapes; not the group polynomial: a cross-check of it)."""
    model = flatten_model(model)
    macs = 0
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if isinstance(op, keras.layers.InputLayer) or not getattr(op, "weights", None):
                continue
            in_shapes = [tuple(t.shape[1:]) for t in node.input_tensors]
            macs += rules.layer_macs(op, in_shapes, tuple(node.outputs[0].shape[1:]))
    return {"macs": int(macs), "params": int(model.count_params())}


if __name__ == "__main__":  # the command line lives in cafe_tf/cli/flops.py
    import runpy

    runpy.run_module("cafe_tf.cli.flops", run_name="__main__", alter_sys=True)
