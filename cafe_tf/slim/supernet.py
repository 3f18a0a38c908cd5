"""A supernet that runs any sub-network of a functional Keras model.

``Supernet(model)`` wraps the full-width plain model (its variables are the supernet's weights: save
the supernet by saving ``supernet.model``) and executes the model's channel graph with slimmable
layers. A sub-network is a **channel selection**: one ``int32`` index tensor per channel group
(``cafe_tf.graph``); compute scales with the selection (gather mode, default). In **mask mode**
(``masks=``, static shapes for TPU/XLA, and Dagger's gates) the full width runs and each group's
channels are multiplied by a per-channel factor after BN (or after the producing layer where no BN
follows), which equals removing the channels whose factor is 0.

Example::

    supernet = Supernet(cafe_tf.models.build("resnet20"))
    sel = supernet.selection({g.id: np.arange(g.size // 2) for g in supernet.graph.prunable_groups})
    logits = supernet(images, selection=sel, training=False)
    plain = supernet.extract(sel)        # a standalone keras.Model with the same outputs
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from cafe_tf import layers as rules
from cafe_tf.graph import ChannelGraph, TensorSpace

Selection = Sequence["tf.Tensor | None"]


class Supernet(keras.Model):
    """Runs ``model`` at any channel selection with weights shared with the full model."""

    def __init__(self, model: keras.Model, graph: ChannelGraph | None = None, **kwargs):
        graph = graph or ChannelGraph.from_model(model)
        super().__init__(name=kwargs.pop("name", f"supernet_{model.name}"), **kwargs)
        self.model = graph.model  # the flattened model when ``model`` nests others (same layers)
        self.graph = graph
        # Where mask mode multiplies: after every layer whose output is not zero where its input was
        # (normalisations, non-zero-preserving activations, ``x + 3``), and after producers whose
        # output is not only read by a normalisation (which is masked itself).
        readers: dict[str, list[str]] = {}
        for node in self.graph.nodes:
            for i in node.inputs:
                readers.setdefault(i, []).append(node.name)
        self._mask_after = set()
        for node in self.graph.nodes:
            if node.rule is None:
                continue
            if node.rule.normalizes or not node.zero_preserving or (
                node.rule.filtered
                and not all(self.graph.node_by_name[r].rule.normalizes for r in readers.get(node.name, []))
            ):
                self._mask_after.add(node.name)
        self._output_names = [n for n in (self.graph._output_ids.get(id(t)) for t in self.model.outputs)]
        self.num_groups = len(self.graph.groups)

    # ----------------------------------------------------------------------------------------
    def selection(self, channels: Mapping[int, np.ndarray] | None) -> list[tf.Tensor | None]:
        """Index tensors for every group from {group id: channel indices}; other groups stay full.

        The selection is validated (range, duplicates, non-prunable groups) before any tensor is made.
        """
        if channels is None:
            return [None] * self.num_groups
        full = self.graph.validate_selection(dict(channels))
        return [
            None if len(full[g.id]) == g.size and np.array_equal(full[g.id], np.arange(g.size))
            else tf.constant(full[g.id], tf.int32)
            for g in self.graph.groups
        ]

    def trace_selection(self, channels: Mapping[int, np.ndarray] | None = None) -> list[tf.Tensor | None]:
        """Like :meth:`selection`, but every prunable group gets a tensor (even at full width) and
        every other group ``None``: the same structure for every width. A ``tf.function`` with
        ``reduce_retracing=True`` taking it traces at most twice; for exactly one trace pass
        :meth:`packed` tensors under :meth:`packed_signature` and :meth:`unpack` them inside."""
        full = self.graph.validate_selection(dict(channels or {}))
        return [tf.constant(full[g.id], tf.int32) if g.prunable else None for g in self.graph.groups]

    def packed(self, channels: Mapping[int, np.ndarray] | None = None) -> list[tf.Tensor]:
        """One int32 index tensor per prunable group (in group order): a flat tf.function argument."""
        return [t for t in self.trace_selection(channels) if t is not None]

    def packed_signature(self) -> list[tf.TensorSpec]:
        """``tf.function`` input signature of :meth:`packed`: shape ``[None]`` per prunable group."""
        return [tf.TensorSpec([None], tf.int32) for g in self.graph.groups if g.prunable]

    def unpack(self, packed: Sequence[tf.Tensor]) -> list[tf.Tensor | None]:
        """The full selection (None for non-prunable groups) from :meth:`packed` tensors."""
        it = iter(packed)
        return [next(it) if g.prunable else None for g in self.graph.groups]

    def _space_index(self, space: TensorSpace, selection: Selection, cache: dict) -> tf.Tensor | None:
        key = (space.segments, space.block, space.repeat, space.inner)
        if key not in cache:
            cache[key] = rules.space_positions(space, [selection[g] for g in space.groups],
                                               [self.graph.groups[g].size for g in space.groups], rules.TF)
        return cache[key]

    def call(self, inputs, selection: Selection | None = None, training=False, masks=None, bn_stats=None,
             collect_bn=None):
        """Runs the sub-network ``selection`` (None: the full net).

        Args:
          masks: optional per-group float vectors (full width; None for a group leaves it alone).
          bn_stats: optional {bn layer name: (mean, var)} to normalise with (BN recalibration), or
            ``"batch"``: every BN normalises with its batch's statistics and leaves its moving ones
            alone (what the sub-network computes after a BN recalibration, without the assignments).
          collect_bn: optional dict that receives {bn layer name: (batch mean, batch var)}.
        """
        if isinstance(bn_stats, str):
            if bn_stats != "batch":
                raise ValueError(f"bn_stats={bn_stats!r} is invalid; give a dict of statistics or 'batch'")
            collect_bn = {} if collect_bn is None else collect_bn
            bn_stats = _BatchStatsView(collect_bn)
        selection = list(selection) if selection is not None else [None] * self.num_groups
        if len(selection) != self.num_groups:
            raise ValueError(f"selection has {len(selection)} entries; the model has {self.num_groups} groups")
        run = _Run(self, selection, training, masks, bn_stats, collect_bn)
        for node in self.graph.nodes:
            if node.rule is None:  # the model input
                run.values[id(node.call.outputs[0])] = inputs
                continue
            y = node.rule.apply(node, run)
            if masks is not None and node.name in self._mask_after:
                y = self._apply_mask(y, node.out_space, masks, run.out_index(node))
            run.values[id(node.call.outputs[0])] = y
        outs = [run.values[id(t)] for t in self.model.outputs]
        return outs[0] if len(outs) == 1 else outs

    def _mask_vector(self, space: TensorSpace, masks, dtype) -> tf.Tensor | None:
        """The full-width mask of a tensor's last axis (None when no group of it is masked)."""
        parts = [masks[g] for g in space.groups]
        if all(p is None for p in parts):
            return None
        full = [tf.ones([self.graph.groups[g].size], dtype) if p is None else tf.cast(p, dtype)
                for g, p in zip(space.groups, parts)]
        m = tf.concat([tf.repeat(v, space.inner) if space.inner != 1 else v for v in full], axis=0)
        if space.repeat != 1:
            m = tf.tile(m, [space.repeat])
        return m

    def _apply_mask(self, y, space: TensorSpace, masks, index=None):
        m = self._mask_vector(space, masks, y.dtype)
        if m is None:
            return y
        return y * (m if index is None else tf.gather(m, index))

    # ----------------------------------------------------------------------------------------
    def calibrate_bn(self, selection: Selection, batches: Iterable, num_batches: int | None = None) -> int:
        """Re-estimates the moving BN statistics of ``selection``'s channels on ``batches``.

        The sub-network runs with batch statistics; each BN's moving mean/variance for the selected
        channels is set to the average over the batches of the batch mean and (biased) variance, as
        AutoSlim and CafeNet do before evaluating a width. Other channels are untouched.
        Returns the number of batches used.
        """
        sums, count = None, 0
        for batch in batches:
            if num_batches is not None and count >= num_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            stats = self._collect_fn(images, selection)
            sums = stats if sums is None else {k: (sums[k][0] + v[0], sums[k][1] + v[1]) for k, v in stats.items()}
            count += 1
        if count == 0:
            raise ValueError("calibrate_bn got no batches; give it an iterable of image batches")
        cache: dict = {}
        for node in self.graph.nodes:
            if node.name not in sums:
                continue
            mean, var = (s / count for s in sums[node.name])
            index = self._space_index(node.out_space, selection, cache)
            layer = node.layer
            for moving, value in ((layer.moving_mean, mean), (layer.moving_variance, var)):
                if index is None:
                    moving.assign(value)
                else:
                    moving.assign(tf.tensor_scatter_nd_update(moving.value, index[:, None], value))
        return count

    @tf.function(reduce_retracing=True)
    def _collect_fn(self, images, selection):
        collected: dict = {}
        self.call(images, selection=selection, training=False, bn_stats="batch", collect_bn=collected)
        return collected

    def extract(self, channels: Mapping[int, np.ndarray], name: str | None = None) -> keras.Model:
        """A standalone plain Keras model of the sub-network ``channels`` with its weights copied."""
        from cafe_tf import surgery

        return surgery.extract(self.model, channels, graph=self.graph, name=name)


class _Run:
    """One supernet forward pass: the tensors so far and what a rule's ``apply`` may ask of it."""

    def __init__(self, supernet: Supernet, selection, training, masks, bn_stats, collect_bn):
        self.supernet, self.selection, self.training = supernet, selection, training
        self.masks, self.bn_stats, self.collect_bn = masks, bn_stats, collect_bn
        self.values: dict[int, tf.Tensor] = {}  # id(the model's KerasTensor) -> tensor
        self._cache: dict = {}

    def input(self, node):
        """The node's first tensor input."""
        return self.values[id(node.call.input_tensors[0])]

    def in_index(self, node):
        return None if node.in_space is None else self.supernet._space_index(node.in_space, self.selection, self._cache)

    def out_index(self, node):
        return self.supernet._space_index(node.out_space, self.selection, self._cache)

    def mask_of(self, space, index):
        """The float32 mask of ``space`` at the kept positions ``index`` (None without masks)."""
        if self.masks is None:
            return None
        m = self.supernet._mask_vector(space, self.masks, tf.float32)
        return m if m is None or index is None else tf.gather(m, index)

    def call_original(self, node):
        """Calls the node's own layer / operation on the current tensors, with its recorded arguments."""
        args, kwargs = node.call.arguments.fill_in(self.values)
        op = node.layer
        if getattr(op, "_call_has_training_arg", False):
            kwargs["training"] = self.training
        return op(*args, **kwargs)


class _BatchStatsView(dict):
    """bn_stats view that makes BN normalise with the statistics just collected for its batch."""

    def __init__(self, collected: dict):
        super().__init__()
        self._collected = collected

    def get(self, key, default=None):
        return self._collected.get(key, default)
