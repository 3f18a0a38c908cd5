"""The width search space: per-group bins, sharing patterns and ``widths.json``.

Each prunable channel group (``cafe_tf.graph``) is cut into bins of adjacent channels, FLOPs-sensitive
(default) or uniform; a width is a number of bins, and the sharing pattern (``fixed`` or
``locally_free`` with offset ``r``) says which bins realise it. :meth:`SearchSpace.channels` turns a
candidate into the channel selection the supernet and surgery take. The bin and zone rules are our
reading of CafeNet: see docs/papers.md.

Widths always count bins. Where the free channels may sit is counted in ``zone_unit``:

* ``"channels"`` (default; the paper's Figure 1: the zone is a few channels around the
  width's boundary): width ``k`` bins ends at channel ``c = bounds[k]``; its base is channels
  ``0 .. c - r*m - 1`` and ``r*m`` free channels, in units of ``m = channel_multiple``, sit among
  ``c - r*m .. c + r*m - 1`` (clipped to the group). A 32-channel width of a 64-channel group with
  r = 1 picks channel 31 or channel 32 as its last one.
* ``"bins"``: the zone is ``r`` bins on either side of the boundary. With FLOPs-sensitive bins of 32
  channels in a 64-channel group, r = 1 makes the zone the whole group (channels 0-31 or 32-63).

An arrangement is, per group, the sorted indices of the *units* it uses (bins, or blocks of
``channel_multiple`` channels): :meth:`SearchSpace.unit_bounds` maps them to channels.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cafe_tf import io
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph

WIDTHS_SCHEMA = "cafe_tf.widths"
WIDTHS_VERSION = 3
GRANULARITIES = ("flops_sensitive", "uniform")
SHARINGS = ("locally_free", "fixed")
ZONE_UNITS = ("channels", "bins")


@dataclasses.dataclass(frozen=True)
class GroupBins:
    """The bins of one prunable group: bin k holds channels ``bounds[k] .. bounds[k+1]-1``."""

    group_id: int
    name: str
    size: int
    bounds: tuple[int, ...]

    @property
    def num_bins(self) -> int:
        return len(self.bounds) - 1

    def channels(self, bins: Sequence[int]) -> np.ndarray:
        """Sorted channel indices covered by ``bins``."""
        return np.concatenate([np.arange(self.bounds[b], self.bounds[b + 1]) for b in sorted(bins)])


def check_channel_multiple(channel_multiple: int, groups: Sequence[Any], what: str = "channel_multiple") -> int:
    """Validates a channel multiple against prunable ``groups`` (objects with ``name`` and ``size``).

    Raises ValueError naming the value, the narrowest group and the ways out.
    """
    if isinstance(channel_multiple, bool) or int(channel_multiple) != channel_multiple or channel_multiple < 1:
        raise ValueError(f"{what}={channel_multiple!r} is invalid; it must be an integer >= 1 (1 = off)")
    m = int(channel_multiple)
    narrow = [g for g in groups if g.size < m]
    if narrow:
        g = min(narrow, key=lambda x: x.size)
        raise ValueError(
            f"{what}={m} is larger than prunable group {g.name!r} ({g.size} channels); use a multiple <= "
            f"{min(x.size for x in groups)}, or declare that layer a fixed-width boundary "
            f"(ChannelGraph.from_model(model, boundaries=[...]) or cafe_tf.graph.set_boundaries)"
        )
    return m


class SearchSpace:
    """Per-group width choices (in bins) and the free-channel candidates of each width."""

    def __init__(
        self,
        graph: ChannelGraph,
        granularity: str = "flops_sensitive",
        sharing: str = "locally_free",
        r: int = 1,
        num_bins: int = 20,
        max_bin: int = 32,
        cost: CostModel | None = None,
        channel_multiple: int = 1,
        zone_unit: str = "channels",
    ):
        if zone_unit not in ZONE_UNITS:
            raise ValueError(f"zone_unit {zone_unit!r} is not one of {ZONE_UNITS}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r} is not one of {GRANULARITIES}")
        if sharing not in SHARINGS:
            raise ValueError(f"sharing {sharing!r} is not one of {SHARINGS}")
        if r < 0:
            raise ValueError(f"r (the local zone offset, in {zone_unit}) must be >= 0, got {r}")
        if num_bins < 1 or max_bin < 1:
            raise ValueError(f"num_bins and max_bin must be >= 1, got {num_bins} and {max_bin}")
        self.graph = graph
        self.cost = cost or CostModel(graph)
        self.granularity, self.sharing, self.num_uniform_bins, self.max_bin = granularity, sharing, num_bins, max_bin
        self.r = r if sharing == "locally_free" else 0
        prunable = graph.prunable_groups
        if not prunable:
            raise ValueError(f"model {graph.model.name!r} has no prunable channel group")
        m = self.channel_multiple = check_channel_multiple(channel_multiple, prunable)
        if granularity == "flops_sensitive":
            marginal = self.cost.marginal_macs()[[g.id for g in prunable]]
            marginal = np.maximum(marginal, 1e-9)
            ratio = marginal.max() / marginal
            sizes = np.clip(2 ** np.ceil(np.log2(np.maximum(ratio, 1.0))), 1, max_bin).astype(int)
            sizes = m * -(-sizes // m)  # rounded up: every bound but the group's full width is a multiple of m
            self.groups = [
                GroupBins(g.id, g.name, g.size, tuple(range(0, g.size, int(b))) + (g.size,))
                for g, b in zip(prunable, sizes)
            ]
        else:
            self.groups = []
            for g in prunable:
                # Evenly spaced bounds snapped to multiples of m (the full width stays the last bound).
                units = np.linspace(0, g.size / m, min(num_bins, g.size // m) + 1).round().astype(int) * m
                bounds = np.unique(np.append(np.minimum(units, g.size), g.size))
                self.groups.append(GroupBins(g.id, g.name, g.size, tuple(int(x) for x in bounds)))
        self.num_bins = np.array([g.num_bins for g in self.groups], dtype=np.int64)
        self.zone_unit = zone_unit
        if zone_unit == "bins":
            self._units = [g.bounds for g in self.groups]
        else:  # blocks of channel_multiple channels (the last one holds the remainder)
            self._units = [tuple(range(0, g.size, m)) + (g.size,) for g in self.groups]
        self._unit_index = [{c: i for i, c in enumerate(u)} for u in self._units]

    # ----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The space's settings (recorded in widths.json)."""
        return {"granularity": self.granularity, "sharing": self.sharing, "r": self.r, "zone_unit": self.zone_unit,
                "num_bins": self.num_uniform_bins, "max_bin": self.max_bin,
                "channel_multiple": self.channel_multiple, "bins_per_group": self.num_bins.tolist()}

    @property
    def size_log10(self) -> float:
        """log10 of the number of width assignments."""
        return float(np.sum(np.log10(self.num_bins)))

    def check_widths(self, widths: Sequence[int]) -> np.ndarray:
        """Validates a width assignment (bins per prunable group); raises ValueError naming the bad value."""
        w = np.asarray(widths, dtype=np.int64)
        if w.shape != (len(self.groups),):
            raise ValueError(f"a width assignment needs {len(self.groups)} entries (one per group), got shape {w.shape}")
        bad = np.flatnonzero((w < 1) | (w > self.num_bins))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"width {int(w[i])} of group {self.groups[i].name!r} is outside its choices 1..{int(self.num_bins[i])} bins"
            )
        return w

    def unit_bounds(self, group: int) -> tuple[int, ...]:
        """Channel bounds of the arrangement units of group position ``group`` (unit u: ``[b[u], b[u+1])``)."""
        return self._units[group]

    def width_units(self, group: int, k: int) -> int:
        """How many units width ``k`` bins of group position ``group`` covers."""
        return self._unit_index[group][self.groups[group].bounds[k]]

    def zone(self, group: int, k: int) -> tuple[int, range]:
        """(number of base units, the local zone's units) of width ``k`` bins in group position ``group``."""
        units = self._units[group]
        n = len(units) - 1
        a = self.width_units(group, k)
        base = max(0, a - self.r)
        if a < n and (units[-1] - units[-2]) % self.channel_multiple:
            # The last unit holds the group's remainder (size % channel_multiple): below full width it
            # stays out of the zone, so every arrangement's channel count is a multiple.
            n -= 1
        return base, range(base, min(a + self.r, n))

    def candidates(self, group: int, k: int) -> list[tuple[int, ...]]:
        """Every arrangement (sorted unit indices) of width ``k`` bins in group position ``group``."""
        if not 0 <= group < len(self.groups):
            raise ValueError(f"group position {group} does not exist; valid: 0..{len(self.groups) - 1}")
        if not 1 <= k <= self.num_bins[group]:
            raise ValueError(
                f"width {k} of group {self.groups[group].name!r} is outside its choices 1..{int(self.num_bins[group])} bins"
            )
        base, zone = self.zone(group, k)
        return [tuple(range(base)) + free for free in itertools.combinations(zone, self.width_units(group, k) - base)]

    def fixed(self, widths: Sequence[int]) -> list[tuple[int, ...]]:
        """The fixed-pattern arrangement (leftmost units) of a width assignment."""
        return [tuple(range(self.width_units(i, int(k)))) for i, k in enumerate(self.check_widths(widths))]

    def sample_widths(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """Width assignments drawn uniformly over each group's bins: shape (G,) or (n, G)."""
        shape = (len(self.groups),) if n is None else (n, len(self.groups))
        return rng.integers(1, self.num_bins + 1, size=shape)

    def sample_arrangement(self, widths: Sequence[int], rng: np.random.Generator) -> list[tuple[int, ...]]:
        """One arrangement per group, its free bins drawn uniformly inside each local zone."""
        out = []
        for i, k in enumerate(self.check_widths(widths)):
            base, zone = self.zone(i, int(k))
            a = self.width_units(i, int(k))
            free = np.sort(rng.choice(np.asarray(zone), size=a - base, replace=False)) if a > base else ()
            out.append(tuple(range(base)) + tuple(int(b) for b in free))
        return out

    def channels(self, arrangement: Sequence[Sequence[int]]) -> dict[int, np.ndarray]:
        """Channel selection {group id: sorted channel indices} of an arrangement (prunable groups)."""
        if len(arrangement) != len(self.groups):
            raise ValueError(f"an arrangement needs {len(self.groups)} entries, got {len(arrangement)}")
        return {g.group_id: np.concatenate([np.arange(u[b], u[b + 1]) for b in sorted(units)])
                for g, u, units in zip(self.groups, self._units, arrangement)}

    def channel_widths(self, widths: np.ndarray) -> np.ndarray:
        """Group widths in channels (all groups, by id) of bin widths, leftmost bins; batched on axis 0."""
        widths = np.asarray(widths, dtype=np.int64)
        full = np.broadcast_to(self.cost.full_widths, widths.shape[:-1] + (len(self.graph.groups),)).copy()
        for i, g in enumerate(self.groups):
            full[..., g.group_id] = np.asarray(g.bounds)[widths[..., i]]
        return full

    def macs(self, widths: np.ndarray) -> int | np.ndarray:
        """MACs of bin widths (batched on axis 0)."""
        return self.cost.macs(self.channel_widths(widths))

    def params(self, widths: np.ndarray) -> int | np.ndarray:
        """Parameters of bin widths (batched on axis 0)."""
        return self.cost.params(self.channel_widths(widths))

    def uniform_widths(self, fraction: float) -> np.ndarray:
        """Bin widths closest to scaling every group by ``fraction`` of its channels."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        out = []
        for g in self.groups:
            target = fraction * g.size
            k = int(np.argmin(np.abs(np.asarray(g.bounds[1:]) - target))) + 1
            out.append(k)
        return np.asarray(out, dtype=np.int64)

    def widths_of_arrangement(self, arrangement: Sequence[Sequence[int]]) -> np.ndarray:
        """Bin widths of an arrangement."""
        out = []
        for g, u, units in zip(self.groups, self._units, arrangement):
            out.append(g.bounds.index(sum(u[b + 1] - u[b] for b in units)))
        return np.asarray(out, dtype=np.int64)


# -------------------------------------------------------------------------------------------------
# widths.json


def write_widths(
    path: str | os.PathLike,
    graph: ChannelGraph,
    selection: Mapping[int, np.ndarray],
    model_info: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes ``widths.json`` for a channel selection; returns the record written.

    ``model_info`` holds ``name``, ``input_shape``, ``num_classes`` and ``width_mult``, and ``source``
    (``cafe_tf.models.source.ModelSource.record``: where the model came from, so every later stage
    rebuilds the same one; a registry name may omit it). MACs and params are computed here, never
    trusted from the caller. Nothing is written when a check fails.
    """
    from cafe_tf import models
    from cafe_tf.models import source as source_lib

    for key in ("name", "input_shape", "num_classes", "width_mult"):
        if key not in model_info:
            raise ValueError(f"model_info lacks {key!r}; it needs name, input_shape, num_classes, width_mult")
    model_source = model_info.get("source")
    if model_source is None:
        if model_info["name"] not in models.names():
            raise ValueError(f"model_info of {model_info['name']!r} lacks 'source' (ModelSource.record()); only a "
                             f"registry model {models.names()} may omit it")
        model_source = source_lib.builtin_record(model_info)
    source_lib.validate_record(model_source)
    full = graph.validate_selection(dict(selection))
    cost = CostModel(graph)
    widths = cost.widths_of(full)
    record = {
        "model": {
            "name": model_info["name"],
            "input_shape": [int(x) for x in model_info["input_shape"]],
            "num_classes": int(model_info["num_classes"]),
            "width_mult": float(model_info["width_mult"]),
        },
        "model_source": dict(model_source),
        "groups": [
            {"name": g.name, "size": g.size, "width": int(len(full[g.id])), "channels": full[g.id].tolist()}
            for g in graph.prunable_groups
        ],
        "macs": cost.macs(widths),
        "params": cost.params(widths),
        "full_macs": cost.macs(),
        "full_params": cost.params(),
        **(dict(extra) if extra else {}),
    }
    io.write_artifact(path, WIDTHS_SCHEMA, WIDTHS_VERSION, record)
    return {"schema": WIDTHS_SCHEMA, "schema_version": WIDTHS_VERSION, **record}


def _validate_widths(obj: dict[str, Any]) -> None:
    from cafe_tf.models import source as source_lib

    model = obj["model"]
    if not isinstance(model, dict):
        raise ValueError("'model' must be an object")
    for key in ("name", "input_shape", "num_classes", "width_mult"):
        if key not in model:
            raise ValueError(f"'model' lacks {key!r}")
    source_lib.validate_record(obj["model_source"])
    if not isinstance(obj["groups"], list):
        raise ValueError("'groups' must be a list")
    for i, g in enumerate(obj["groups"]):
        for key in ("name", "size", "channels"):
            if key not in g:
                raise ValueError(f"groups[{i}] lacks {key!r}")
        if not isinstance(g["channels"], list) or not all(isinstance(c, int) for c in g["channels"]):
            raise ValueError(f"groups[{i}] ({g['name']!r}) channels must be a list of integers")


def read_widths(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a ``widths.json``; raises ``io.ArtifactError`` naming the problem."""
    return io.read_artifact(path, WIDTHS_SCHEMA, (WIDTHS_VERSION,), ("model", "model_source", "groups", "macs", "params"),
                            _validate_widths, writer="the search or prune stage")


def selection_from_record(graph: ChannelGraph, record: Mapping[str, Any]) -> dict[int, np.ndarray]:
    """The channel selection of a ``widths.json`` record, checked against ``graph``'s groups."""
    selection = {}
    for g in record["groups"]:
        if g["name"] not in graph.group_by_name:
            raise ValueError(
                f"widths.json names group {g['name']!r}, which the model does not have; "
                f"its prunable groups: {[x.name for x in graph.prunable_groups]}"
            )
        group = graph.group_by_name[g["name"]]
        if group.size != g["size"]:
            raise ValueError(f"group {g['name']!r} has {group.size} channels in the model but {g['size']} in widths.json")
        selection[group.id] = np.asarray(g["channels"], dtype=np.int64)
    return graph.validate_selection(selection)


# -------------------------------------------------------------------------------------------------
# A space from a config section, and the supernet record that names one


SUPERNET_SCHEMA = "cafe_tf.supernet"
SUPERNET_VERSION = 2


def space_from_section(graph: ChannelGraph, section: Any) -> SearchSpace:
    """The search space a ``supernet`` config section (or a recorded ``space`` dict) describes."""
    return SearchSpace(graph, granularity=section["granularity"], sharing=section["sharing"], r=int(section["r"]),
                       num_bins=int(section["num_bins"]), max_bin=int(section["max_bin"]),
                       channel_multiple=int(section["channel_multiple"]), zone_unit=str(section["zone_unit"]))


def read_supernet(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates ``supernet.json`` (model, space, settings); raises ``io.ArtifactError`` naming the problem."""
    def check(obj):
        for key in ("name", "input_shape", "num_classes", "width_mult"):
            if key not in obj["model"]:
                raise ValueError(f"'model' lacks {key!r}")
        for key in ("granularity", "sharing", "r", "num_bins", "max_bin", "channel_multiple", "zone_unit"):
            if key not in obj["space"]:
                raise ValueError(f"'space' lacks {key!r}")

    return io.read_artifact(path, SUPERNET_SCHEMA, (SUPERNET_VERSION,), ("model", "space", "settings"), check,
                            writer="the supernet stage")
