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

from cafe_tf.graph import ChannelGraph, TensorSpace
from cafe_tf.slim.layers import SLIM_TYPES, SlimBatchNormalization

Selection = Sequence["tf.Tensor | None"]


class Supernet(keras.Model):
    """Runs ``model`` at any channel selection with weights shared with the full model."""

    def __init__(self, model: keras.Model, graph: ChannelGraph | None = None, **kwargs):
        super().__init__(name=kwargs.pop("name", f"supernet_{model.name}"), **kwargs)
        self.model = model
        self.graph = graph or ChannelGraph.from_model(model)
        self._slim = {}
        for node in self.graph.nodes:
            slim_type = SLIM_TYPES.get(type(node.layer))
            if slim_type is not None:
                self._slim[node.name] = slim_type(node.layer)
        self._slim_layers = list(self._slim.values())  # tracked by Keras
        # Where mask mode multiplies: after every BN, and after producers whose output is not only read by BN.
        readers: dict[str, list[str]] = {}
        for node in self.graph.nodes:
            for i in node.inputs:
                readers.setdefault(i, []).append(node.name)
        self._mask_after = set()
        for node in self.graph.nodes:
            if node.kind == "bn" or (
                node.kind in ("conv", "dense", "depthwise")
                and not all(self.graph.node_by_name[r].kind == "bn" for r in readers.get(node.name, []))
            ):
                self._mask_after.add(node.name)
        self._output_names = [t._keras_history.operation.name for t in model.outputs]
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
        key = (space.segments, space.block, space.repeat)
        if key in cache:
            return cache[key]
        parts = [selection[g] for g, _ in space.segments]
        if all(p is None for p in parts) and space.repeat == 1:
            out = None
        else:
            full = [tf.range(self.graph.groups[g].size) if p is None else p for (g, _), p in zip(space.segments, parts)]
            block = tf.concat([p + off for p, (_, off) in zip(full, space.segments)], axis=0)
            if space.repeat == 1:
                out = block
            elif all(p is None for p in parts):
                out = None
            else:
                out = tf.reshape(tf.range(space.repeat)[:, None] * space.block + block[None, :], [-1])
        cache[key] = out
        return out

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
        tensors: dict[str, tf.Tensor] = {}
        cache: dict = {}
        for node in self.graph.nodes:
            if node.kind == "input":
                tensors[node.name] = inputs
                continue
            args = [tensors[i] for i in node.inputs]
            x = args[0]
            if node.kind == "conv":
                y = self._slim[node.name](x, in_index=self._space_index(node.in_space, selection, cache),
                                          out_index=selection[node.out_space.segments[0][0]])
            elif node.kind == "dense":
                y = self._slim[node.name](x, in_index=self._space_index(node.in_space, selection, cache),
                                          out_index=selection[node.out_space.segments[0][0]])
            elif node.kind == "depthwise":
                y = self._slim[node.name](x, index=selection[node.out_space.segments[0][0]])
            elif node.kind == "bn":
                slim: SlimBatchNormalization = self._slim[node.name]
                index = self._space_index(node.out_space, selection, cache)
                if collect_bn is not None:
                    collect_bn[node.name] = slim.batch_moments(x)
                stats = None if bn_stats is None else bn_stats.get(node.name)
                y = slim(x, index=index, training=training, stats=stats)
            elif node.kind in ("merge", "concat"):
                y = node.layer(args)
            elif isinstance(node.layer, (keras.layers.Dropout, keras.layers.SpatialDropout2D,
                                         keras.layers.GaussianNoise)):
                y = node.layer(x, training=training)
            else:
                y = node.layer(x)
            if masks is not None and node.name in self._mask_after:
                y = self._apply_mask(y, node.out_space, masks)
            tensors[node.name] = y
        outs = [tensors[n] for n in self._output_names]
        return outs[0] if len(outs) == 1 else outs

    def _apply_mask(self, y, space: TensorSpace, masks):
        parts = [masks[g] for g, _ in space.segments]
        if all(p is None for p in parts):
            return y
        full = [tf.ones([self.graph.groups[g].size], y.dtype) if p is None else tf.cast(p, y.dtype)
                for (g, _), p in zip(space.segments, parts)]
        m = tf.concat(full, axis=0)
        if space.repeat != 1:
            m = tf.tile(m, [space.repeat])
        return y * m

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
            if node.kind != "bn":
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


class _BatchStatsView(dict):
    """bn_stats view that makes BN normalise with the statistics just collected for its batch."""

    def __init__(self, collected: dict):
        super().__init__()
        self._collected = collected

    def get(self, key, default=None):
        return self._collected.get(key, default)
