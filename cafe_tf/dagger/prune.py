"""From per-filter scores to an exact-MACs channel selection, and physical pruning.

One routine, :func:`exact_target`, serves every method, so Dagger and its baselines prune on the
same code path and land on the same budget:

* ``dagger`` / ``free``: score = the gate logit; the starting mask is the open gates (logit > 0).
* ``l1``: score = ``log(l1_c / mean_c l1)``, the filter's L1 norm summed over the group's
  producing layers, relative to its group's mean (raw L1 norms grow with fan-in, so they are not
  comparable across layers); the starting mask keeps everything.
* ``dagger_l1_fill``: Dagger's per-group widths (its exact-target selection), each group filled with
  its highest-L1 filters of the pretrained network (:func:`l1_fill`): Dagger's allocation with L1's
  filter choice.
* ``uniform``: every group shrinks by the same fraction; within a group the filters go by L1 norm.
  Realised as the score ``-(rank within group + 1) / group size``, starting from everything.

The exact-target step (our design): start from the mask, keep the best
``group_floor(size, min_channels, min_keep_ratio)`` filters of every group (a floor, so no group is
cut through, and optionally none below a fraction of its width), then

1. *remove*: while the exact MACs (``CostModel.macs``) exceed the target, drop the globally
   lowest-scored filter still kept; if that would overshoot below the tolerance band (an expensive
   filter, e.g. of a residual group, in a small model), skip it and drop the next-lowest-scored
   ones that do not (first fit), falling back to plain rank order if that cannot reach the target;
2. *fill*: walk the dropped filters from the highest score down and add back every one that still
   fits under the target (a filter of an expensive group may not fit where a cheaper one does);
3. *repair* (only while still below the band, which happens on small models with few, expensive
   channels): drop the lowest-scored kept filter of one group and refill, taking the trade that
   lands closest under the target, until inside the band or no trade helps;
4. if the starting mask still ends outside the band, start over from the full network (pure
   global ranking).

The result has ``macs <= target`` and, unless the granularity makes it impossible, ``macs >=
(1 - tolerance) * target``; otherwise a ``ValueError`` names what was reached.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from cafe_tf import io, surgery
from cafe_tf.flops import CostModel
from cafe_tf.graph import ChannelGraph
from cafe_tf.space import check_channel_multiple

METHODS = ("dagger", "free", "l1", "uniform", "dagger_l1_fill")
# Methods that train gates first; ``dagger_l1_fill`` takes Dagger's per-group widths and fills each group
# with its highest-L1 filters of the pretrained network (:func:`l1_fill`).
GATED_METHODS = ("dagger", "free", "dagger_l1_fill")
# How the exact-target step ranks gated filters: by logit (``score``), or by gate value per MAC
# (``score_per_mac``: ``sigmoid(logit)`` over the MACs of one channel of the filter's group).
RANKINGS = ("score", "score_per_mac")


def check_target_ratio(ratio: float) -> float:
    """Validates a target MACs ratio (fraction of the full model's MACs, in (0, 1])."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"target_macs_ratio must be a number in (0, 1], got {ratio!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"target_macs_ratio must be in (0, 1] (a fraction of the full model's MACs), got {ratio!r}")
    return value


def filter_l1_norms(graph: ChannelGraph) -> dict[int, np.ndarray]:
    """{prunable group id: per-channel L1 norm summed over the group's producers' filters}."""
    out = {}
    for g in graph.prunable_groups:
        total = np.zeros(g.size)
        for name in g.producers:
            node = graph.node_by_name[name]
            if node.rule is None or not node.rule.producer:
                continue
            total += np.abs(np.asarray(node.rule.filter_matrix(node.layer), dtype=np.float64)).sum(axis=1)
        out[g.id] = total
    return out


def l1_scores(graph: ChannelGraph) -> dict[int, np.ndarray]:
    """L1-norm baseline scores: log of each filter's L1 norm over its group's mean (comparable across groups)."""
    return {gid: np.log((l1 + 1e-12) / (l1.mean() + 1e-12)) for gid, l1 in filter_l1_norms(graph).items()}


def uniform_scores(graph: ChannelGraph) -> dict[int, np.ndarray]:
    """Uniform-width baseline scores: ``-(rank + 1) / size``, ranks by L1 norm within the group."""
    out = {}
    for gid, l1 in filter_l1_norms(graph).items():
        order = np.lexsort((np.arange(l1.size), -l1))  # strongest first, ties by index
        rank = np.empty(l1.size)
        rank[order] = np.arange(l1.size)
        out[gid] = -(rank + 1.0) / l1.size
    return out


def group_floor(size: int, min_channels: int = 1, min_keep_ratio: float = 0.0) -> int:
    """How many filters a group of ``size`` keeps at least: ``max(min_channels, ceil(min_keep_ratio *
    size))``, at most ``size``. Gate training (``train.GateTrainer``) holds the same floor open."""
    return int(min(size, max(min_channels, int(np.ceil(min_keep_ratio * size - 1e-9)))))


def exact_target(
    cost: CostModel,
    scores: Mapping[int, np.ndarray],
    target_macs: float,
    initial: Mapping[int, np.ndarray] | None = None,
    min_channels: int = 1,
    tolerance: float = 0.01,
    strict: bool = True,
    min_keep_ratio: float = 0.0,
    channel_multiple: int = 1,
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Channel selection {group id: sorted indices} with exact MACs in ``[(1 - tol) target, target]``.

    ``scores``: per-channel scores of each prunable group to rank by (higher = more important);
    ``initial``: boolean starting masks (default: ``score > 0``). Every group keeps at least
    :func:`group_floor` filters (its best-scored). ``channel_multiple`` m > 1 ranks units of m
    channels instead of single channels (a group's channels in score order, cut into runs of m; the
    ``size % m`` weakest channels form a last unit that is added back only to a group whose other units
    are all kept, and dropped from a group that lost one), so every kept width is a multiple of m or
    the group's full width.
    Returns (selection, info).

    Raises:
      ValueError: bad arguments, a target below the smallest reachable network, or (``strict``) a
        result outside the tolerance band.
    """
    graph = cost.graph
    if min_channels < 1:
        raise ValueError(f"min_channels (the per-group floor) must be >= 1, got {min_channels}")
    if not 0 <= min_keep_ratio < 1:
        raise ValueError(f"min_keep_ratio (the per-group floor as a fraction of its width) must be in [0, 1), "
                         f"got {min_keep_ratio}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    gids = list(scores)
    if not gids:
        raise ValueError(f"model {graph.model.name!r} has no prunable channel group to prune "
                         f"(groups and why they are fixed: {[f'{g.name}: {g.reason}' for g in graph.groups]})")
    for gid in gids:
        g = graph.group(gid)
        if not g.prunable:
            raise ValueError(f"group {g.name!r} cannot be pruned ({g.reason}); give scores for prunable groups only")
        if np.shape(scores[gid]) != (g.size,):
            raise ValueError(f"scores of group {g.name!r} have shape {np.shape(scores[gid])}; expected ({g.size},)")
    m = check_channel_multiple(channel_multiple, [graph.groups[gid] for gid in gids])
    for gid in gids:
        if not np.all(np.isfinite(np.asarray(scores[gid], np.float64))):
            raise ValueError("scores contain NaN or infinite values")
    # The greedy steps below rank "units": single channels (m = 1), or runs of m channels in score order.
    units = _units(graph, scores, gids, m)
    group_of = np.asarray([u[0] for u in units])
    channel = np.asarray([u[1] for u in units])  # a unit's position in its group: the tie-break
    unit_channels = [u[2] for u in units]
    size_of = np.asarray([len(u[2]) for u in units], np.int64)
    remainder = size_of % m != 0  # a group's last, short unit (never for m = 1)
    score = np.asarray([float(np.mean(np.asarray(scores[u[0]], np.float64)[u[2]])) for u in units])
    if initial is None:
        keep = score > 0
    else:  # a unit starts kept when most of its channels do
        keep = np.asarray([np.mean(np.asarray(initial[u[0]], bool)[u[2]]) >= 0.5 for u in units])
    protected = np.zeros_like(keep)
    for gid in gids:
        idx = np.flatnonzero(group_of == gid)
        floor = group_floor(graph.groups[gid].size, min_channels, min_keep_ratio)
        best = idx[np.lexsort((channel[idx], -score[idx]))]
        # the best units until the floor's channels are covered
        protected[best[: int(np.searchsorted(np.cumsum(size_of[best]), floor)) + 1]] = True
    keep |= protected

    def widths_of(mask: np.ndarray) -> np.ndarray:
        w = cost.full_widths.copy()
        w[gids] = 0
        np.add.at(w, group_of[mask], size_of[mask])
        return w

    full_macs = cost.macs()
    floor_macs = cost.macs(widths_of(protected))
    if target_macs < floor_macs:
        raise ValueError(
            f"target of {target_macs:.0f} MACs ({target_macs / full_macs:.4f} of the full model) is below "
            f"{floor_macs} MACs ({floor_macs / full_macs:.4f}), the smallest network that keeps "
            f"min_channels={min_channels} and min_keep_ratio={min_keep_ratio} per group"
            + (f" in units of channel_multiple={m}" if m > 1 else "") + "; raise the target or lower the floor"
        )
    w = widths_of(keep)
    initial_macs = macs = cost.macs(w)
    removed = added = 0
    # Units of one group differ in size only by the remainder: one MACs step per (group, unit size).
    pairs, pair_of = np.unique(np.stack([group_of, size_of], axis=1), axis=0, return_inverse=True)
    pair_of = pair_of.reshape(-1)
    pair_steps = np.zeros((len(pairs), cost.num_groups), np.int64)
    pair_steps[np.arange(len(pairs)), pairs[:, 0]] = pairs[:, 1]

    def step_costs(widths: np.ndarray, sign: int) -> np.ndarray:
        """Per unit: the MACs added by adding it (+1) or saved by removing it (-1), at ``widths``."""
        return (sign * (cost.macs(widths[None, :] + sign * pair_steps) - cost.macs(widths)))[pair_of]

    lower = (1 - tolerance) * target_macs
    start_keep = keep.copy()
    if macs > target_macs:  # remove the globally lowest-scored filters; the whole order evaluated in one batch
        cand = np.flatnonzero(keep & ~protected)
        cand = cand[np.lexsort((-channel[cand], score[cand]))]
        onehot = np.zeros((cand.size, cost.num_groups), np.int64)
        onehot[np.arange(cand.size), group_of[cand]] = size_of[cand]
        trajectory = w[None, :] - np.cumsum(onehot, axis=0)
        trajectory_macs = cost.macs(trajectory)
        k = int(np.argmax(trajectory_macs <= target_macs))  # exists: floor_macs <= target
        plain_keep = keep.copy()
        plain_keep[cand[: k + 1]] = False
        plain_w = trajectory[k].copy()
        if trajectory_macs[k] < lower:
            # The crossing filter is expensive and overshoots the band: skip such filters and keep
            # removing the next-lowest-scored ones that do not undershoot it (first fit).
            keep[cand[:k]] = False
            if k:
                w = trajectory[k - 1].copy()
            macs = cost.macs(w)
            saving = step_costs(w, -1)
            for c in cand[k:]:
                g = group_of[c]
                if macs - saving[c] >= lower:
                    keep[c] = False
                    w[g] -= size_of[c]
                    macs = cost.macs(w)
                    saving = step_costs(w, -1)
                    if macs <= target_macs:
                        break
            if macs > target_macs:  # no first-fit solution: fall back to the plain rank order
                keep, w = plain_keep, plain_w
        else:
            keep, w = plain_keep, plain_w
        macs = cost.macs(w)
        removed = int((start_keep & ~keep).sum())
    # Fill: add back dropped filters, best first, wherever they still fit.
    def fill(keep: np.ndarray, w: np.ndarray, macs: int, banned: int = -1) -> tuple[np.ndarray, np.ndarray, int, int]:
        keep, w, n = keep.copy(), w.copy(), 0
        cand = np.flatnonzero(~keep)
        cand = cand[np.lexsort((channel[cand], -score[cand]))]
        delta = step_costs(w, +1)
        for c in cand:
            slack = target_macs - macs
            if slack < delta[cand].min():
                break
            g = group_of[c]
            if remainder[c] and np.any(~keep & ~remainder & (group_of == g)):
                continue  # the short unit only completes a group to its full width
            if delta[c] <= slack and c != banned:
                keep[c] = True
                w[g] += size_of[c]
                macs += int(delta[c])
                n += 1
                delta = step_costs(w, +1)
        return keep, w, macs, n

    keep, w, macs, added = fill(keep, w, macs)
    # Repair (coarse models only): while below the band, drop the lowest-scored kept filter of some
    # group and refill with others, taking the trade that gets closest to the target.
    swaps = 0
    while macs < lower and swaps < 10 * len(gids):
        best = None
        for gid in gids:
            members = np.flatnonzero(keep & ~protected & (group_of == gid))
            if not members.size:
                continue
            c = members[np.lexsort((-channel[members], score[members]))[0]]
            trial_keep, trial_w = keep.copy(), w.copy()
            trial_keep[c] = False
            trial_w[gid] -= size_of[c]
            trial = fill(trial_keep, trial_w, cost.macs(trial_w), banned=c)
            if trial[2] > macs and (best is None or trial[2] > best[2]):
                best = trial
        if best is None:
            break
        keep, w, macs, n = best
        added += n
        swaps += 1
    selection = {}
    for gid in gids:
        kept = [unit_channels[i] for i in np.flatnonzero(keep & (group_of == gid))]
        chosen = np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
        size = graph.groups[gid].size
        if chosen.size != size and chosen.size % m:
            # the remainder unit is kept without some other unit: drop the remainder's weakest channels
            s = np.asarray(scores[gid], np.float64)[chosen]
            chosen = np.sort(chosen[np.lexsort((-chosen, s))[chosen.size % m:]])
            w[gid] = chosen.size
        selection[gid] = chosen
    macs = cost.macs(w)  # recount exactly, never trust the running sum
    info = {
        "target_macs": float(target_macs),
        "achieved_macs": int(macs),
        "full_macs": int(full_macs),
        "achieved_ratio": macs / full_macs,
        "target_ratio": target_macs / full_macs,
        "relative_error": (macs - target_macs) / target_macs,
        "initial_macs": int(initial_macs),
        "removed_by_greedy": int(removed),
        "added_by_greedy": int(added),
        "repair_swaps": int(swaps),
        "restarted_from_full": False,
        "min_channels": int(min_channels),
        "min_keep_ratio": float(min_keep_ratio),
        "channel_multiple": m,
        "params": int(cost.params(w)),
    }
    in_band = (1 - tolerance) * target_macs <= macs <= target_macs
    if not in_band and not np.all(start_keep):
        # The starting mask led to a corner the greedy steps cannot leave: rank from the full network.
        everything = {gid: np.ones(graph.groups[gid].size, bool) for gid in gids}
        retry = exact_target(cost, scores, target_macs, everything, min_channels, tolerance, strict=False,
                             min_keep_ratio=min_keep_ratio, channel_multiple=m)
        if (1 - tolerance) * target_macs <= retry[1]["achieved_macs"] <= target_macs:
            retry[1].update(initial_macs=int(initial_macs), restarted_from_full=True)
            return retry
    if strict and not in_band:
        raise ValueError(
            f"could not reach the target within {tolerance:.1%}: {macs} MACs for a target of {target_macs:.0f} "
            f"({info['relative_error']:+.2%}); the model's channel groups are too coarse for this target"
            + (f" at channel_multiple={m} (a smaller multiple or a larger tolerance reaches closer)" if m > 1 else "")
        )
    return selection, info


def _units(graph: ChannelGraph, scores: Mapping[int, np.ndarray], gids: Sequence[int], m: int
           ) -> list[tuple[int, int, np.ndarray]]:
    """(group id, position in group, channel indices) of every unit the exact-target step ranks.

    m = 1: one unit per channel, in index order. m > 1: each group's channels by score (best first,
    ties by index), cut into runs of m; the ``size % m`` weakest channels are the last, short run.
    """
    units = []
    for gid in gids:
        size = graph.groups[gid].size
        if m == 1:
            units += [(gid, c, np.array([c])) for c in range(size)]
            continue
        order = np.lexsort((np.arange(size), -np.asarray(scores[gid], np.float64)))
        runs = [run for run in np.split(order, np.arange(m, size, m)) if run.size]
        units += [(gid, i, run) for i, run in enumerate(runs)]
    return units


def per_mac_scores(cost: CostModel, logits: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Gate value per MAC: ``sigmoid(logit) / (m_g / mean m)``, ``m_g`` the MACs of one channel of group
    g at full width (``CostModel.marginal_macs``), the mean over the gated groups. Within a group the
    order is the logits'; across groups a cheaper channel ranks higher at an equal logit."""
    marginal = cost.marginal_macs()
    gids = list(logits)
    mean = float(np.mean([marginal[gid] for gid in gids]))
    return {gid: (1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits[gid], np.float64), -60, 60))))
            / (marginal[gid] / mean) for gid in gids}


def l1_fill(graph: ChannelGraph, widths: Mapping[int, int]) -> dict[int, np.ndarray]:
    """{group id: the group's ``widths[gid]`` highest-L1 channels (``filter_l1_norms``, ties by index),
    sorted}: another selection's per-group widths, filled in L1 order within each group."""
    norms = filter_l1_norms(graph)
    out = {}
    for gid, width in widths.items():
        size = graph.group(gid).size
        if not 0 <= int(width) <= size:
            raise ValueError(f"width {width!r} of group {graph.group(gid).name!r} is not in [0, {size}]")
        order = np.lexsort((np.arange(size), -norms[gid]))  # strongest first, ties by index
        out[gid] = np.sort(order[: int(width)])
    return out


def method_scores(method: str, graph: ChannelGraph, logits: Mapping[int, np.ndarray] | None = None
                  ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray] | None]:
    """(scores, initial masks) of a pruning method; ``logits`` ({group id: gate logits}) for the gated
    methods (dagger, free, dagger_l1_fill: the selection :func:`l1_fill` takes its widths from)."""
    if method in GATED_METHODS:
        if logits is None:
            raise ValueError(f"method {method!r} needs the trained gate logits; none were given")
        return {gid: np.asarray(v, np.float64) for gid, v in logits.items()}, None
    if method == "l1":
        scores = l1_scores(graph)
    elif method == "uniform":
        scores = uniform_scores(graph)
    else:
        raise ValueError(f"pruning method {method!r} is not one of {METHODS}")
    return scores, {gid: np.ones(s.size, bool) for gid, s in scores.items()}


def select_channels(method: str, cost: CostModel, target_macs_ratio: float,
                    logits: Mapping[int, np.ndarray] | None = None, min_channels: int = 1,
                    tolerance: float = 0.01, min_keep_ratio: float = 0.0, channel_multiple: int = 1,
                    rank_by: str = "score") -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """The exact-target selection of ``method`` at ``target_macs_ratio`` of the full model's MACs.

    ``rank_by="score_per_mac"`` (gated methods only) ranks by :func:`per_mac_scores`, starting from the
    open gates. For ``dagger_l1_fill`` this is the gated selection whose widths :func:`l1_fill` fills."""
    ratio = check_target_ratio(target_macs_ratio)
    if rank_by not in RANKINGS:
        raise ValueError(f"rank_by={rank_by!r} is not one of {RANKINGS}")
    scores, initial = method_scores(method, cost.graph, logits)
    if rank_by == "score_per_mac":
        if method not in GATED_METHODS:
            raise ValueError(f"rank_by='score_per_mac' ranks gate logits; method {method!r} has none "
                             f"(gated methods: {GATED_METHODS})")
        initial = {gid: np.asarray(s) > 0 for gid, s in scores.items()}  # the open gates, as by logit
        scores = per_mac_scores(cost, scores)
    selection, info = exact_target(cost, scores, ratio * cost.macs(), initial, min_channels, tolerance,
                                   min_keep_ratio=min_keep_ratio, channel_multiple=channel_multiple)
    info.update(method=method, rank_by=rank_by)
    return selection, info


def selection_masks(graph: ChannelGraph, selection: Mapping[int, np.ndarray]) -> list[np.ndarray | None]:
    """0/1 float masks over all groups (None where every channel stays) of a channel selection."""
    full = graph.validate_selection(dict(selection))
    masks: list[np.ndarray | None] = [None] * len(graph.groups)
    for g in graph.groups:
        if len(full[g.id]) != g.size:
            m = np.zeros(g.size, np.float32)
            m[full[g.id]] = 1.0
            masks[g.id] = m
    return masks


def prune_model(model: keras.Model, selection: Mapping[int, np.ndarray], graph: ChannelGraph | None = None
                ) -> keras.Model:
    """The physically pruned plain model (``surgery.extract``: filters, input slices, BN statistics)."""
    return surgery.extract(model, selection, graph=graph)


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Saves a Keras model atomically (a killed job never leaves half a ``.keras`` file)."""
    with io.atomic_path(path) as tmp:
        model.save(tmp)


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a ``.keras`` model, with an error naming the file if it is missing or unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist; give a Keras 3 .keras file")
    if not path.endswith(".keras"):
        raise ValueError(f"model file {path!r} is not a .keras file; save the model with model.save('name.keras')")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad archive
        raise ValueError(f"could not load the Keras model {path!r}: {type(e).__name__}: {e}") from None


def kept_ratios(graph: ChannelGraph, selection: Mapping[int, np.ndarray]) -> list[dict[str, Any]]:
    """Per prunable group: name, layers producing it, size, kept channels and kept ratio."""
    rows = []
    for g in graph.prunable_groups:
        kept = len(selection[g.id]) if g.id in selection else g.size
        rows.append({"group": g.name, "layers": list(g.producers), "size": g.size, "kept": int(kept),
                     "ratio": kept / g.size})
    return rows


def logits_by_group(group_ids: Sequence[int], logits: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """{group id: numpy logits} from the module's ordered list."""
    return {gid: np.asarray(l, np.float64) for gid, l in zip(group_ids, logits)}
