"""Search space: bins, sharing patterns, candidates and widths.json."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cafe_tf import io, models
from cafe_tf.graph import ChannelGraph
from cafe_tf.space import WIDTHS_VERSION, SearchSpace, read_widths, selection_from_record, write_widths
from toy_models import coupling_zoo


@pytest.fixture(scope="module")
def graph():
    return ChannelGraph.from_model(models.build("resnet20"))


@pytest.fixture(scope="module")
def space(graph):
    return SearchSpace(graph, granularity="flops_sensitive", sharing="locally_free", r=1)


def test_flops_sensitive_bins_balance_cost(space):
    marginal = space.cost.marginal_macs()
    bin_cost = []
    for g in space.groups:
        size = g.bounds[1] - g.bounds[0]
        assert size & (size - 1) == 0 and 1 <= size <= 32  # a power of two
        bin_cost.append(size * marginal[g.group_id])
    bin_cost = np.asarray(bin_cost)
    # Every group whose bins are not clipped at 1 or 32 costs within 2x of the most expensive channel.
    assert bin_cost.max() / bin_cost.min() <= 2.0 + 1e-9
    assert space.size_log10 < SearchSpace(space.graph, granularity="uniform", num_bins=64).size_log10


def test_uniform_bins(graph):
    s = SearchSpace(graph, granularity="uniform", num_bins=4)
    for g in s.groups:
        sizes = np.diff(g.bounds)
        assert g.num_bins == min(4, g.size) and sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("r", [1, 2, 3])
def test_candidates_count_and_zone(space, graph, r):
    s = SearchSpace(graph, granularity="uniform", num_bins=16, r=r, zone_unit="bins")
    n = int(s.num_bins[0])
    mid = n // 2
    cands = s.candidates(0, mid)
    assert len(cands) == math.comb(2 * r, r)
    for c in cands:
        assert len(c) == mid and list(c[: mid - r]) == list(range(mid - r))  # base bins are fixed
        assert all(mid - r <= b < mid + r for b in c[mid - r:])  # free bins inside the zone
    assert s.candidates(0, n) == [tuple(range(n))]  # full width: the zone is clipped to one choice
    assert len(s.candidates(0, 1)) == min(r + 1, n)  # width 1: choose one bin among 0..r


def test_r0_is_the_fixed_pattern(graph):
    free0 = SearchSpace(graph, sharing="locally_free", r=0)
    fixed = SearchSpace(graph, sharing="fixed")
    rng = np.random.default_rng(0)
    for _ in range(10):
        w = free0.sample_widths(rng)
        arr = free0.sample_arrangement(w, rng)
        assert arr == fixed.fixed(w) == fixed.sample_arrangement(w, rng)
        for i, k in enumerate(w):
            assert free0.candidates(i, int(k)) == [free0.fixed(w)[i]]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_sampled_arrangements_are_candidates(space, seed):
    rng = np.random.default_rng(seed)
    w = space.sample_widths(rng)
    arr = space.sample_arrangement(w, rng)
    assert space.widths_of_arrangement(arr).tolist() == w.tolist()
    for i, (k, bins) in enumerate(zip(w, arr)):
        assert tuple(bins) in space.candidates(i, int(k))
    sel = space.channels(arr)
    space.graph.validate_selection(sel)


def test_macs_monotone_and_batched(space):
    rng = np.random.default_rng(3)
    w = space.sample_widths(rng, 16)
    assert space.macs(w).tolist() == [space.macs(x) for x in w]
    assert space.macs(space.num_bins) == space.cost.macs()
    assert space.macs(np.ones_like(space.num_bins)) < space.macs(space.num_bins // 2 + 1)


def test_bad_widths_are_named(space):
    w = space.num_bins.copy()
    w[2] = space.num_bins[2] + 1
    with pytest.raises(ValueError, match=rf"width {w[2]} of group '{space.groups[2].name}' is outside its choices 1..{space.num_bins[2]}"):
        space.check_widths(w)
    with pytest.raises(ValueError, match=f"needs {len(space.groups)} entries"):
        space.check_widths([1, 2])
    with pytest.raises(ValueError, match="granularity 'log' is not one of"):
        SearchSpace(space.graph, granularity="log")


def test_widths_json_roundtrip_and_errors(tmp_path, space, graph):
    rng = np.random.default_rng(0)
    sel = space.channels(space.sample_arrangement(space.sample_widths(rng), rng))
    info = {"name": "resnet20", "input_shape": [32, 32, 3], "num_classes": 10, "width_mult": 1.0}
    path = tmp_path / "widths.json"
    rec = write_widths(path, graph, sel, info, {"score": 0.5})
    back = read_widths(path)
    assert back == json.loads(path.read_text()) and back["macs"] == rec["macs"]
    again = selection_from_record(graph, back)
    for gid, idx in sel.items():
        assert again[gid].tolist() == sorted(idx.tolist())
    assert back["macs"] == space.cost.macs(space.cost.widths_of(sel))

    bad = dict(back)
    bad["groups"] = [dict(back["groups"][0], name="nope")] + back["groups"][1:]
    with pytest.raises(ValueError, match="names group 'nope', which the model does not have"):
        selection_from_record(graph, bad)
    bad["groups"] = [dict(back["groups"][0], channels=[0, 999])]
    with pytest.raises(ValueError, match="channel index 999 .* out of range"):
        selection_from_record(graph, bad)
    for version in (WIDTHS_VERSION - 1, 9):  # an earlier file and a later one: refused, naming the writer
        (tmp_path / "v.json").write_text(json.dumps(dict(back, schema_version=version)))
        with pytest.raises(io.ArtifactError, match=f"v.json' has schema_version {version}; this cafe-tf reads version "
                           f"{WIDTHS_VERSION} only: re-run the search or prune stage"):
            read_widths(tmp_path / "v.json")
    (tmp_path / "trunc.json").write_text(path.read_text()[:50])
    with pytest.raises(io.ArtifactError, match="trunc.json.*not valid JSON"):
        read_widths(tmp_path / "trunc.json")


def test_space_on_coupled_model():
    g = ChannelGraph.from_model(coupling_zoo())
    s = SearchSpace(g)
    assert {x.name for x in s.groups} == {x.name for x in g.prunable_groups}


# -------------------------------------------------------------------------------------------------
# channel_multiple: every width the space can realise is a multiple of it, or the group's full width


def _realisable_widths(space):
    return [(g, np.asarray(g.bounds[1:])) for g in space.groups]


@settings(max_examples=12, deadline=None)
@given(m=st.sampled_from([1, 2, 3, 4, 8, 16]), granularity=st.sampled_from(["flops_sensitive", "uniform"]),
       num_bins=st.integers(1, 40))
def test_channel_multiple_bins_are_multiples(graph, m, granularity, num_bins):
    s = SearchSpace(graph, granularity=granularity, num_bins=num_bins, channel_multiple=m)
    for g, widths in _realisable_widths(s):
        assert g.bounds[0] == 0 and g.bounds[-1] == g.size and np.all(np.diff(g.bounds) > 0)
        assert np.all((widths % m == 0) | (widths == g.size)), (g.name, g.bounds)
    # Zones are made of bins, so every candidate arrangement's channel count is a realisable width too.
    rng = np.random.default_rng(m)
    for widths in s.sample_widths(rng, 5):
        counts = [len(c) for c in s.channels(s.sample_arrangement(widths, rng)).values()]
        assert all(c % m == 0 or c == g.size for c, g in zip(counts, s.groups))
    assert s.describe()["channel_multiple"] == m


def test_channel_multiple_on_groups_not_divisible():
    s = SearchSpace(ChannelGraph.from_model(coupling_zoo()), granularity="uniform", num_bins=50, channel_multiple=3)
    for g, widths in _realisable_widths(s):
        assert np.all((widths % 3 == 0) | (widths == g.size)), (g.name, g.size, g.bounds)
    assert any(g.size % 3 for g in s.groups)  # the rule "or full width" is exercised


def test_flops_sensitive_bins_rounded_up_to_the_multiple(graph, space):
    s = SearchSpace(graph, channel_multiple=8)
    for plain, rounded in zip(space.groups, s.groups):
        step, step8 = plain.bounds[1] - plain.bounds[0], rounded.bounds[1] - rounded.bounds[0]
        assert step8 == min(8 * math.ceil(step / 8), plain.size)  # powers of two: max(8, step)


@pytest.mark.parametrize("m, match", [
    (0, r"channel_multiple=0 is invalid; it must be an integer >= 1 \(1 = off\)"),
    (-2, r"channel_multiple=-2 is invalid"),
    (17, r"channel_multiple=17 is larger than prunable group '.*' \(16 channels\); use a multiple <= 16, or declare "
         r"that layer a fixed-width boundary \(ChannelGraph.from_model\(model, boundaries=\[...\]\) or "
         r"cafe_tf.graph.set_boundaries\)"),
])
def test_bad_channel_multiple_is_named(graph, m, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace(graph, channel_multiple=m)
