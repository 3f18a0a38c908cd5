"""The fair comparison's parts: local zones in channels, equal MACs (uniform bisection), equal scoring, statistics."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from cafe_tf import compare, models
from cafe_tf.graph import ChannelGraph
from cafe_tf.search import baselines
from cafe_tf.search.evaluator import SupernetEvaluator, split_calibration
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace
from supernet_helpers import cnn


@pytest.fixture(scope="module")
def graph():
    return ChannelGraph.from_model(models.build("resnet20", input_shape=(28, 28, 1), num_classes=10))


# ---------------------------------------------------------------------------------------------- zones


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 3), m=st.sampled_from([1, 2, 4, 8]), granularity=st.sampled_from(["flops_sensitive", "uniform"]),
       seed=st.integers(0, 2**31 - 1))
def test_channel_zone_free_channels_lie_within_r_channels_of_the_boundary(graph, r, m, granularity, seed):
    s = SearchSpace(graph, granularity=granularity, r=r, channel_multiple=m, zone_unit="channels")
    rng = np.random.default_rng(seed)
    widths = s.sample_widths(rng)
    for i, (g, k) in enumerate(zip(s.groups, widths)):
        c = g.bounds[int(k)]  # the width's boundary, in channels
        cands = s.candidates(i, int(k))
        assert 1 <= len(cands) <= math.comb(2 * r, r)
        for arrangement in cands + [s.sample_arrangement(widths, rng)[i]]:
            sel = s.channels([arrangement if j == i else s.fixed(widths)[j] for j in range(len(s.groups))])
            ch = sel[g.group_id]
            assert len(ch) == c and len(set(ch.tolist())) == c  # the width is kept
            base = max(0, c - r * m)
            assert set(range(base)) <= set(ch.tolist())  # every base channel is used
            free = ch[ch >= base]
            assert free.min() >= c - r * m and free.max() < c + r * m  # free channels within r*m of the boundary
            assert c == g.size or len(ch) % m == 0


def test_bin_zone_of_a_wide_bin_is_the_whole_group_and_channel_zone_is_local(graph):
    bins, chans = SearchSpace(graph, zone_unit="bins"), SearchSpace(graph, zone_unit="channels")
    i = next(j for j, g in enumerate(bins.groups) if g.name == "stage3_block1_conv1")
    assert bins.groups[i].bounds == (0, 32, 64)  # FLOPs-sensitive: two bins of 32 channels
    as_channels = sorted(tuple(bins.channels([a if j == i else bins.fixed(np.ones_like(bins.num_bins))[j]
                                              for j in range(len(bins.groups))])[bins.groups[i].group_id].tolist())
                         for a in bins.candidates(i, 1))
    assert as_channels == [tuple(range(32)), tuple(range(32, 64))]  # r = 1 bin: the whole group is the zone
    ones = np.ones_like(chans.num_bins)
    as_channels = sorted(tuple(chans.channels([a if j == i else chans.fixed(ones)[j] for j in range(len(chans.groups))])
                               [chans.groups[i].group_id].tolist()) for a in chans.candidates(i, 1))
    assert as_channels == [tuple(range(32)), tuple(range(31)) + (32,)]  # r = 1 channel: channel 31 or channel 32
    assert bins.describe()["zone_unit"] == "bins" and chans.describe()["zone_unit"] == "channels"
    with pytest.raises(ValueError, match="zone_unit 'units' is not one of"):
        SearchSpace(graph, zone_unit="units")


# ---------------------------------------------------------------------------------------------- equal MACs


@pytest.mark.parametrize("m", [1, 4])
def test_uniform_bisection_lands_within_one_percent_of_each_budget(graph, m):
    s = SearchSpace(graph, channel_multiple=m)
    full = s.cost.macs()
    factors = []
    for budget in (0.3, 0.5, 0.7):
        factor, selection = baselines.uniform_at(s, budget * full, 0.01, m)
        macs = s.cost.macs(s.cost.widths_of(graph.validate_selection(selection)))
        assert abs(macs - budget * full) <= 0.01 * budget * full
        for g in s.groups:  # one factor for every group, rounded to the multiple, then at most a few multiples up
            n = len(selection[g.group_id])
            base = min(g.size, max(m, m * round(factor * g.size / m)))
            assert n % m == 0 and base <= n <= base + 2 * m
            assert selection[g.group_id].tolist() == list(range(n))
        factors.append(factor)
    assert factors == sorted(factors)
    with pytest.raises(ValueError, match=r"no uniform width factor reaches [\d,]+ MACs within 1e-05%"):
        baselines.uniform_at(s, 0.5 * full + 1, 1e-7, 16)
    with pytest.raises(ValueError, match="lower supernet.channel_multiple"):
        baselines.uniform_at(s, 0.5 * full + 1, 1e-7, 16)


def test_budgets_and_tolerance_are_checked():
    assert compare.parse_budgets(["0.3", "0.5"]) == [0.3, 0.5]
    for bad in (["0"], ["1.0"], ["0.5", "0.5"], ["x"]):
        with pytest.raises(ValueError, match=f"--budgets={','.join(bad)} is invalid"):
            compare.parse_budgets(bad)
    assert baselines.band(1000.0, 0.01) == (990.0, 1010.0)
    assert set(compare.DEFAULT_ARMS) <= set(compare.ARMS) and compare.ARMS["random"].method == "random"
    assert compare.variants_of(["uniform"], 0) == ["cafenet"]
    assert compare.variants_of(["k4", "random"], 3) == ["cafenet", "fixed", "k4"]


def test_m8_arm_searches_a_space_of_multiples_of_8(graph):
    """The m8 arm's supernet overrides make every bin bound a multiple of 8 (or the group's full width);
    the config's own space (channel_multiple 1) has bounds off the multiples."""
    from cafe_tf.space import space_from_section
    from cafe_tf.training.supernet import supernet_section

    assert compare.ARMS["m8"].supernet == "m8" and compare.ARMS["m8"].method == "evolution"
    assert compare.variants_of(["cafenet", "m8"], 0) == ["cafenet", "m8"]
    section = supernet_section().to_dict()
    section.update(zone_unit="channels")
    plain = space_from_section(graph, section)
    rounded = space_from_section(graph, {**section, **compare.SUPERNETS["m8"]})
    assert rounded.channel_multiple == 8
    assert any(b % 8 for g in plain.groups for b in g.bounds[1:])
    for g in rounded.groups:
        assert all(b % 8 == 0 or b == g.size for b in g.bounds[1:]), (g.name, g.bounds)


# ---------------------------------------------------------------------------------------------- equal scoring


def _evaluator(sharing, scoring, k=2, calibration_images=24):
    supernet = Supernet(cnn())
    space = SearchSpace(supernet.graph, sharing=sharing, r=1)
    rng = np.random.default_rng(0)
    cal = [tf.constant(rng.uniform(0, 1, (8, 12, 12, 1)), tf.float32) for _ in range(calibration_images // 8)]
    val = [(tf.constant(rng.uniform(0, 1, (16, 12, 12, 1)), tf.float32), tf.constant(rng.integers(0, 3, 16)))]
    return space, SupernetEvaluator(supernet, space, cal, val, num_candidates=k, scoring=scoring)


def test_equal_scoring_gives_every_sharing_the_same_number_of_evaluations():
    widths = None
    for sharing in ("fixed", "locally_free"):
        for k in (2, 3):
            space, ev = _evaluator(sharing, "equal", k)
            widths = np.maximum(1, space.num_bins // 2)
            rec = ev(widths)
            assert ev.evaluations == k and len(rec["candidates"]) == k
            assert rec["score"] == max(rec["candidates"])
            assert len(ev.calibration_sets) == k
    space, ev = _evaluator("fixed", "arrangements", 3)
    ev(widths)
    assert ev.evaluations == 1  # the old rule: a fixed space gets one evaluation, whatever K
    with pytest.raises(ValueError, match="scoring 'best' is not one of"):
        _evaluator("fixed", "best")


def test_calibration_sets_are_disjoint_equal_and_repeat_scores_use_each():
    batches = [tf.reshape(tf.range(i * 40, (i + 1) * 40, dtype=tf.float32), (8, 5)) for i in range(3)]  # 24 images
    sets = split_calibration(batches, 3)
    firsts = [set(tf.concat(s, 0)[:, 0].numpy().tolist()) for s in sets]
    assert [len(f) for f in firsts] == [8, 8, 8] and not (firsts[0] & firsts[1] or firsts[1] & firsts[2])
    assert sorted(set().union(*firsts)) == list(range(0, 24 * 5, 5))  # consecutive, nothing lost
    with pytest.raises(ValueError, match="24 calibration images cannot make 25 sets"):
        split_calibration(batches, 25)
    space, ev = _evaluator("fixed", "equal", 3)
    scores = ev.repeat_scores(np.ones_like(space.num_bins))
    assert len(scores) == 3 and ev.evaluations == 3 and all(0 <= s <= 1 for s in scores)


# ---------------------------------------------------------------------------------------------- statistics


def test_tau_and_rho_against_values_computed_by_hand():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert compare.kendall_tau(x, y) == pytest.approx((8 - 2) / 10)  # 2 discordant pairs of 10
    assert compare.spearman_rho(x, y) == pytest.approx(1 - 6 * 4 / (5 * 24))  # sum d^2 = 4
    # Ties take average ranks: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4) -> 4.5 / sqrt(4.5 * 5).
    assert compare.spearman_rho([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert compare.ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert compare.spearman_rho([1, 2, 3], [3, 2, 1]) == -1.0
    assert np.isnan(compare.spearman_rho([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval_holds_the_estimate_and_shrinks_with_more_nets():
    rng = np.random.default_rng(0)
    widths = {}
    for n in (12, 200):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        for stat in (compare.kendall_tau, compare.spearman_rho):
            lo, hi = compare.bootstrap_ci(stat, x, y, num_resamples=500, seed=1)
            assert lo <= stat(x, y) <= hi
            widths[(n, stat.__name__)] = hi - lo
        assert compare.bootstrap_ci(compare.kendall_tau, x, y, 500, seed=1) == compare.bootstrap_ci(
            compare.kendall_tau, x, y, 500, seed=1)  # seeded
    for name in ("kendall_tau", "spearman_rho"):
        assert widths[(200, name)] < 0.5 * widths[(12, name)]


def test_paired_difference_t_interval_by_hand():
    a = {"0": 0.90, "1": 0.92, "2": 0.91, "3": None}
    b = {"0": 0.89, "1": 0.90, "2": 0.90, "3": 0.88}
    d = compare.paired_difference(a, b)
    sd = np.std([0.01, 0.02, 0.01], ddof=1)
    half = 4.302652729911275 * sd / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.04 / 3)
    assert d["low"] == pytest.approx(0.04 / 3 - half) and d["high"] == pytest.approx(0.04 / 3 + half)
    one = compare.paired_difference({"0": 0.9}, {"0": 0.8})
    assert one["n"] == 1 and one["low"] is None and one["mean"] == pytest.approx(0.1)
    assert compare.paired_difference({"0": None}, {"0": 0.8}) is None


# ---------------------------------------------------------------------------------------------- Dagger vs L1 knobs


def test_distillation_term_by_definition():
    from cafe_tf.training import kernel

    rng = np.random.default_rng(0)
    student = tf.constant(rng.normal(size=(5, 4)), tf.float32)
    teacher = tf.constant(rng.normal(size=(5, 4)), tf.float32)
    labels = tf.constant([0, 1, 2, 3, 0])
    ce = kernel.per_example_loss("classification", labels, student)
    # Weight 0: the plain cross-entropy, exactly (the same tensor).
    assert kernel.distilled_loss(ce, "classification", teacher, student, 0.0, 4.0) is ce
    assert kernel.distilled_loss(ce, "classification", None, student, 0.0, 4.0) is ce
    # A teacher equal to the student: the KD term is 0 (softmax and multi-label), and the loss is (1 - w) CE.
    for task in ("classification", "multilabel"):
        np.testing.assert_allclose(kernel.distillation_loss(task, student, student, 3.0).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(kernel.distilled_loss(ce, "classification", student, student, 0.3, 2.0).numpy(),
                               0.7 * ce.numpy(), rtol=1e-6)
    # Otherwise T^2 KL(p_t || p_s) at temperature T, written out; a softmax teacher gives the same.
    T = 2.0
    t64, s64 = teacher.numpy().astype(np.float64), student.numpy().astype(np.float64)
    pt = np.exp(t64 / T) / np.exp(t64 / T).sum(-1, keepdims=True)
    ps = np.exp(s64 / T) / np.exp(s64 / T).sum(-1, keepdims=True)
    want = T * T * np.sum(pt * np.log(pt / ps), -1)  # float64 reference; the loss is float32
    np.testing.assert_allclose(kernel.distillation_loss("classification", teacher, student, T).numpy(), want,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kernel.distillation_loss("classification", tf.nn.softmax(teacher), student, T,
                                                        teacher_from_logits=False).numpy(), want, rtol=1e-4)
    assert np.all(want > 0)
    with pytest.raises(ValueError, match="distillation weight of 0.5 needs the teacher's outputs"):
        kernel.distilled_loss(ce, "classification", None, student, 0.5, 2.0)


def _tiny_source(n=32, batch=8, shape=(8, 8, 1), classes=3):
    from cafe_tf import data

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int64)
    info = data.DatasetInfo("synthetic", "classification", classes, shape, {"train": n, "validation": n}, (0.5,),
                            (0.25,), "none", None, tuple(map(str, range(classes))), "", 0)
    base = tf.data.Dataset.from_tensor_slices((x, y))
    return data.DataSource(info, shape, n, batch,
                           lambda epoch, skip, ctx: data.input_pipeline(base, info, True, batch, augment="none", seed=0,
                                                                        epoch=epoch, skip_batches=skip,
                                                                        shuffle_buffer=n, input_context=ctx),
                           {"validation": lambda ctx: data.input_pipeline(base, info, False, batch, input_context=ctx)})


def test_finetune_distills_from_the_teacher_it_is_given(tmp_path):
    import keras

    from cafe_tf import config as cfg
    from cafe_tf.config import ConfigError, validate_train
    from cafe_tf.training import standard

    L = keras.layers
    inp = keras.Input((8, 8, 1))
    init = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu")(inp))))

    def copy():
        m = keras.models.clone_model(init)
        m.set_weights(init.get_weights())
        return m

    train = cfg.base_config().train
    train.update(dict(epochs=1, lr=0.1, weight_decay=0.0, log_every=2, eval_splits=("validation",)))
    # Pure distillation from a teacher equal to the student (no BN, so training and inference agree): zero
    # gradients (up to float32 round-off between the two forward passes), the weights stay. Plain CE moves them.
    moved = {}
    for weight in (1.0, 0.0):
        train.distill_weight = weight
        standard.fit(copy, _tiny_source(), train, str(tmp_path / f"w{weight}"), teacher=copy)
        after = keras.models.load_model(tmp_path / f"w{weight}" / "model.keras").get_weights()
        moved[weight] = max(float(np.abs(a - b).max()) for a, b in zip(after, init.get_weights()))
    assert moved[1.0] < 1e-5 and moved[0.0] > 1e-2
    train.distill_weight = 0.5
    with pytest.raises(ConfigError, match=r"config.train.distill_weight=0.5 needs a teacher"):
        standard.fit(copy, _tiny_source(), train, str(tmp_path / "none"))
    train.distill_weight = 1.5
    with pytest.raises(ConfigError, match=r"train.distill_weight.*1.5.*in \[0, 1\]"):
        validate_train(train)


def test_dagger_without_the_bn_scale_reads_filter_weights_only():
    from cafe_tf.dagger import DaggerModule

    model = models.build("resnet20", input_shape=(16, 16, 3), num_classes=7)
    graph = ChannelGraph.from_model(model)
    modules = {use_bn: DaggerModule(graph, hidden=8, use_bn=use_bn) for use_bn in (True, False)}
    for m in modules.values():
        m.head.kernel.assign(tf.ones_like(m.head.kernel))  # a non-zero head, so the logits read the rows
    with_bn, without = modules[True], modules[False]
    gid = with_bn.group_ids[0]
    assert [s.width for s in without._sources[gid]] == [s.width - 1 for s in with_bn._sources[gid]]
    before = {k: np.concatenate([x.numpy() for x in m.logits()]) for k, m in modules.items()}
    bns = [s.bn for s in with_bn._sources[gid] if s.bn is not None]
    assert bns
    for bn in bns:
        gamma = bn.gamma.numpy()
        bn.gamma.assign(gamma * np.linspace(0.1, 3.0, len(gamma)))  # a new BN-scale pattern
    after = {k: np.concatenate([x.numpy() for x in m.logits()]) for k, m in modules.items()}
    np.testing.assert_array_equal(after[False], before[False])  # use_bn=False: BN scales are not read
    assert not np.allclose(after[True], before[True])


def test_benchmark_script_command_and_estimate():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "cafenet_fair.py")
    spec = importlib.util.spec_from_file_location("cafenet_fair", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--workdir", "/tmp/w", "--budgets", "0.5", "--seeds", "0,1"])
    cmd = bench.command(args)
    assert cmd[1:3] == ["-m", "cafe_tf.compare"] and "--budgets=0.5" in cmd and "--config.supernet.epochs=12" in cmd
    assert "--config.train.epochs=10" in cmd
    two = bench.estimate(args)
    three = bench.estimate(bench.parse_args(["--workdir", "/tmp/w", "--budgets", "0.5", "--seeds", "0,1,2"]))
    assert three["retraining"] == pytest.approx(1.5 * two["retraining"]) and three["supernets"] == two["supernets"]
    # 2 supernets x 12 epochs x 100 s; 4 arms x 2 seeds x 0.5 x 10 epochs x 100 s.
    assert two["supernets"] == pytest.approx(2400.0) and two["retraining"] == pytest.approx(4000.0)
    quick = bench.estimate(bench.parse_args(["--workdir", "/tmp/w", "--quick"]))
    assert sum(quick.values()) < 0.05 * sum(bench.estimate(bench.parse_args(["--workdir", "/tmp/w"])).values())


def test_k1_arm_trains_one_random_arrangement_per_step(graph):
    from cafe_tf.training import supernet as S

    assert compare.SUPERNETS["k1_random"]["num_candidates"] == 1 and compare.SUPERNETS["k4"]["num_candidates"] == 4
    space = SearchSpace(graph, zone_unit="channels")
    options = S.MinMinOptions(num_candidates=1)
    slots = [S.plan_step(space, S.step_rng(0, step), options)[0] for step in range(40)]
    assert all(len(s.arrangements) == 1 for s in slots)  # nothing to select: the one drawn is trained
    # ... and it is a random one inside the zones, not the leftmost pattern.
    assert any(list(s.arrangements[0]) != space.fixed(s.widths) for s in slots)
    for s in slots:
        for i, (k, a) in enumerate(zip(s.widths, s.arrangements[0])):
            assert tuple(a) in space.candidates(i, int(k))
