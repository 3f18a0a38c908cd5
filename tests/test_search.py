"""Width search: budgets and their window, infeasible budgets, evolution vs random, resume, latency, widths.json."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cafe_tf import config as cfg
from cafe_tf import models
from cafe_tf.flops import CostModel, count_keras_model
from cafe_tf.graph import ChannelGraph
from cafe_tf.search import (Budget, BudgetChecker, BudgetError, EvolutionSettings, ScoreCache, evolve,
                            greedy_slimming, pareto_front, random_search, uniform_scaling)
from cafe_tf.search import run as search_run
from cafe_tf.slim import Supernet
from cafe_tf.space import SearchSpace, read_widths, selection_from_record
from cafe_tf.training import supernet as supernet_lib
from cafe_tf.training.subnet import build_subnet
from supernet_helpers import INFO, cnn, separable_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def space():
    """ResNet-20's space (FLOPs-sensitive bins, 12 groups); a small input keeps it fast, the graph is the same."""
    return SearchSpace(ChannelGraph.from_model(models.build("resnet20", input_shape=(16, 16, 3))))


def preference(space, target):
    """A synthetic score with a known optimum at ``target``: minus the mean bin distance to it."""
    def score(widths):
        return -float(np.mean(np.abs(np.asarray(widths) - target) / space.num_bins))
    return score


class Counting:
    """A scorer that counts its calls (and can fail after ``fail_after`` calls, standing for a kill)."""

    def __init__(self, fn, fail_after=None):
        self.fn, self.calls, self.fail_after = fn, [], fail_after

    def __call__(self, widths):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(tuple(int(w) for w in widths))
        return self.fn(widths)


SMALL = EvolutionSettings(population=12, generations=5, parents=4, mutation_prob=0.2, seed=0)


# ---------------------------------------------------------------------------- budgets


def test_every_candidate_the_evolution_scores_is_in_the_window(space):
    budget = Budget(max_macs=0.5 * space.cost.macs())
    checker = BudgetChecker(space, budget)
    cache = ScoreCache(lambda w: float(np.sum(w / space.num_bins)))  # favours big nets: pushes to the budget
    result = evolve(checker, cache, SMALL)
    macs = np.asarray([space.macs(w) for w, _ in cache.items()])
    assert len(macs) >= SMALL.population
    assert np.all(macs <= budget.max_macs) and np.all(macs >= 0.8 * budget.max_macs)
    assert 0.8 * budget.max_macs <= space.macs(result.widths) <= budget.max_macs
    assert [h["generation"] for h in result.history] == [1, 2, 3, 4, 5]
    assert result.history[-1]["best"] >= result.history[0]["best"]  # elitism: the best never gets worse


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_random_search_and_uniform_baseline_meet_the_budget(space, ratio):
    budget = Budget(max_macs=ratio * space.cost.macs(), max_params=0.95 * space.cost.params())
    checker = BudgetChecker(space, budget)
    cache = ScoreCache(preference(space, space.num_bins))
    result = random_search(checker, cache, 30, seed=1)
    assert len(cache) == 30 and all(checker.in_window(w) for w, _ in cache.items())
    assert result.record["score"] == max(r["score"] for _, r in cache.items())
    uniform = uniform_scaling(checker, cache)
    assert checker.within(uniform.widths)
    # The largest uniform net under the budget: scaling a little more breaks it.
    frac = next(f for f in np.linspace(1, 0.01, 400) if np.array_equal(space.uniform_widths(f), uniform.widths))
    bigger = [space.uniform_widths(f) for f in np.linspace(1, frac, 400)]
    assert not any(checker.within(w) and space.macs(w) > space.macs(uniform.widths) for w in bigger)


def test_greedy_slimming_walks_down_to_the_budget(space):
    budget = Budget(max_macs=0.6 * space.cost.macs())
    checker = BudgetChecker(space, budget)
    # The score prefers keeping the last stage wide: greedy should slim the others first.
    weights = np.linspace(0.1, 1.0, len(space.groups))
    cache = ScoreCache(lambda w: float(np.sum(weights * w / space.num_bins)))
    result = greedy_slimming(checker, cache, step=0.25)
    assert checker.within(result.widths)
    macs = [h["macs"] for h in result.history]
    assert macs == sorted(macs, reverse=True) and macs[-1] <= budget.max_macs < macs[0] + 1
    assert result.widths[-1] == space.num_bins[-1]


def test_infeasible_budgets_name_the_feasible_range(space):
    ones, full = np.ones_like(space.num_bins), space.num_bins
    lo, hi = int(space.macs(ones)), int(space.macs(full))
    plo, phi = int(space.params(ones)), int(space.params(full))
    with pytest.raises(BudgetError, match=rf"max_macs=1,000 is infeasible: it is below the smallest sub-network; "
                                          rf"the feasible range of this search space is \[{lo:,}, {hi:,}\] MACs"):
        BudgetChecker(space, Budget(max_macs=1000)).check_feasible()
    with pytest.raises(BudgetError, match=rf"above the full network; .* \[{lo:,}, {hi:,}\] MACs"):
        BudgetChecker(space, Budget(max_macs=hi + 1)).check_feasible()
    with pytest.raises(BudgetError, match=rf"max_params=10 .* \[{plo:,}, {phi:,}\] parameters"):
        BudgetChecker(space, Budget(max_params=10)).check_feasible()
    BudgetChecker(space, Budget(max_macs=hi)).check_feasible()  # the full net itself is a valid budget
    with pytest.raises(BudgetError, match="needs a budget"):
        Budget()
    with pytest.raises(BudgetError, match=r"max_macs=-5 is invalid"):
        Budget(max_macs=-5)


def test_budget_from_config_uses_the_ratio_only_without_explicit_bounds():
    section = search_run.search_section()
    assert search_run.budget_from_section(section, 1000).bounds() == {"macs": 500.0}
    section.max_params = 77
    assert search_run.budget_from_section(section, 1000).bounds() == {"params": 77.0}
    section = search_run.search_section()
    section.method = "annealing"
    with pytest.raises(cfg.ConfigError, match=r"config.search.method='annealing' is invalid; valid values: "
                                               r"\['evolution', 'random', 'greedy', 'uniform'\]"):
        search_run.validate_search(section)
    section = search_run.search_section()
    section.max_latency_ms = 2.0
    with pytest.raises(cfg.ConfigError, match="needs config.search.latency_table"):
        search_run.validate_search(section)


# ---------------------------------------------------------------------------- the evolution


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evolution_beats_random_search_at_equal_cost(space, seed):
    checker = BudgetChecker(space, Budget(max_macs=0.5 * space.cost.macs()))
    target = checker.sample(np.random.default_rng(100 + seed), 1)[0]  # a known optimum inside the window
    evo_cache = ScoreCache(preference(space, target))
    evo = evolve(checker, evo_cache, EvolutionSettings(population=20, generations=10, parents=5, mutation_prob=0.15,
                                                      seed=seed))
    rnd = random_search(checker, ScoreCache(preference(space, target)), len(evo_cache), seed=seed)
    assert evo.record["score"] >= rnd.record["score"]
    assert evo.record["score"] > -0.05  # within 5% of the groups' ranges of the optimum (random: ~ -0.2)


def test_killed_search_resumes_without_scoring_anything_twice(space, tmp_path):
    checker = BudgetChecker(space, Budget(max_macs=0.4 * space.cost.macs()))
    fn = preference(space, space.num_bins // 2 + 1)
    unbroken = evolve(checker, ScoreCache(Counting(fn)), SMALL)

    cache_path, state_path = str(tmp_path / "cache.json"), str(tmp_path / "state.json")
    first = Counting(fn, fail_after=30)  # dies mid-generation
    with pytest.raises(KeyboardInterrupt):
        evolve(checker, ScoreCache(first, cache_path, {"run": 1}), SMALL, state_path=state_path)
    assert os.path.isfile(state_path) and len(first.calls) == 30
    second = Counting(fn)
    resumed_cache = ScoreCache(second, cache_path, {"run": 1})
    assert len(resumed_cache) == 30
    resumed = evolve(checker, resumed_cache, SMALL, state_path=state_path)
    assert not set(first.calls) & set(second.calls)  # nothing scored twice
    assert np.array_equal(resumed.widths, unbroken.widths) and resumed.history == unbroken.history
    assert len(first.calls) + len(second.calls) == unbroken.evaluated
    # A cache of another supernet / evaluator is not reused.
    assert len(ScoreCache(fn, cache_path, {"run": 2})) == 0


def test_pareto_front_is_non_dominated(space):
    checker = BudgetChecker(space, Budget(max_macs=space.cost.macs(), lower_ratio=0.0))
    rng = np.random.default_rng(0)
    cache = ScoreCache(lambda w: float(rng.random()))
    for w in space.sample_widths(np.random.default_rng(1), 60):
        cache(w)
    front = pareto_front(cache, checker)
    assert [r["macs"] for r in front] == sorted(r["macs"] for r in front)
    assert [r["score"] for r in front] == sorted(r["score"] for r in front)
    rows = [(space.macs(w), r["score"]) for w, r in cache.items()]
    for r in front:
        assert not any(m <= r["macs"] and s > r["score"] for m, s in rows)


# ---------------------------------------------------------------------------- latency


class FakeLatencyTable:
    """Stands for deploy.latency_table's predictor: predict_ms(keras_model), here 1 ms per 10k parameters."""

    def __init__(self):
        self.calls = 0

    def predict_ms(self, model):
        self.calls += 1
        assert isinstance(model, keras.Model)
        return model.count_params() / 1e4


def test_latency_budget_keeps_candidates_in_its_window(space):
    table = FakeLatencyTable()
    full_ms = space.cost.params() / 1e4
    budget = Budget(max_latency_ms=0.5 * full_ms)
    checker = BudgetChecker(space, budget, latency=table)
    checker.check_feasible()
    cache = ScoreCache(lambda w: float(np.sum(w)))
    result = evolve(checker, cache, EvolutionSettings(population=6, generations=2, parents=2, seed=0))
    for widths, _ in cache.items():
        ms = checker.latency_ms(widths)
        assert ms == pytest.approx(space.params(widths) / 1e4)  # the predictor saw the candidate's plain model
        assert 0.8 * budget.max_latency_ms <= ms <= budget.max_latency_ms
    assert checker.measure(result.widths)["latency_ms"] <= budget.max_latency_ms
    calls = table.calls
    checker.latency_ms(result.widths)
    assert table.calls == calls  # cached by width
    with pytest.raises(BudgetError, match=r"max_latency_ms=0.001 is infeasible: it is below the smallest"):
        BudgetChecker(space, Budget(max_latency_ms=0.001), latency=table).check_feasible()
    with pytest.raises(BudgetError, match="needs a latency table"):
        BudgetChecker(space, Budget(max_latency_ms=1.0))


def test_missing_latency_table_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"latency_table='.*nope.json' does not exist"):
        search_run.load_latency_predictor(str(tmp_path / "nope.json"))


# ---------------------------------------------------------------------------- the job, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small supernet (cnn_small on separable 12x12 images) trained for 2 epochs, and its data."""
    workdir = str(tmp_path_factory.mktemp("supernet"))
    src = separable_source()
    sec = supernet_lib.supernet_section()
    sec.update(dict(epochs=2, lr=0.05, log_every=6, eval_fractions=(), eval_min=False))
    supernet_lib.train(cnn, src, sec, workdir, model_info=INFO)
    return workdir, src


def search_config(**search):
    c = cfg.base_config()
    c.data.batch_size = 16
    c.search = search_run.search_section()
    c.search.update(dict(population=6, generations=2, parents=2, calibration_examples=32, eval_examples=64))
    c.search.update(search)
    return c


def test_search_job_writes_widths_json_that_retrains_and_resumes(trained, tmp_path):
    workdir, src = trained
    config = search_config(supernet=os.path.join(workdir, "supernet.keras"))
    record = search_run.run(config, str(tmp_path), data=src)
    stored = read_widths(str(tmp_path / "widths.json"))
    model = keras.models.load_model(os.path.join(workdir, "supernet.keras"))
    graph = ChannelGraph.from_model(model)
    cost = CostModel(graph)
    selection = selection_from_record(graph, stored)
    assert stored["macs"] == cost.macs(cost.widths_of(selection)) == record["macs"]
    budget = 0.5 * cost.macs()
    assert 0.8 * budget <= stored["macs"] <= budget and stored["in_window"]
    assert all(0.8 * budget <= row["macs"] <= budget for row in stored["evaluated"])
    assert stored["method"] == "evolution" and 0 <= stored["score"] <= 1
    assert stored["score"] == max(row["score"] for row in stored["evaluated"])
    assert stored["budget"]["resolved"] == {"macs": float(int(budget))}
    assert stored["pareto"] and stored["model"] == INFO and stored["search"]["population"] == 6
    assert len(stored["score_record"]["candidates"]) == 2  # K = 2 arrangements scored, the best kept
    assert stored["scored_this_run"] == len(stored["evaluated"]) > 0
    # The uniform-width net at the chosen net's MACs (within 1%), scored by the same supernet, for the report.
    (uniform,) = stored["baselines"]
    assert uniform["name"] == "uniform width" and abs(uniform["macs"] - stored["macs"]) <= 0.01 * stored["macs"]
    uniform_sel = {g.group_id: np.arange(n) for g, n in zip(supernet_lib.space_from_section(graph, stored["space"]).groups, uniform["channels"])}
    assert cost.macs(cost.widths_of(graph.validate_selection(uniform_sel))) == uniform["macs"]

    # The score is reproducible: the chosen arrangement's accuracy after recalibration, on the same images.
    supernet = Supernet(model)
    space = supernet_lib.space_from_section(graph, stored["space"])
    calib = [x for x, _ in supernet_lib.calibration_batches(src, 32)]
    val = supernet_lib.take_batches(src.make_eval["validation"], 64)
    sel = supernet.trace_selection(space.channels(stored["arrangement"]))
    supernet.calibrate_bn(sel, calib)
    assert supernet_lib.accuracy_of(supernet, sel, val)[0] == pytest.approx(stored["score"])
    uniform_traced = supernet.trace_selection(uniform_sel)
    supernet.calibrate_bn(uniform_traced, calib)
    assert supernet_lib.accuracy_of(supernet, uniform_traced, val)[0] == pytest.approx(uniform["score"])

    # --widths: from scratch, the searched architecture; --init_from_supernet: the supernet's weights too.
    scratch = build_subnet(str(tmp_path / "widths.json"))
    assert count_keras_model(scratch)["macs"] == stored["macs"]
    inherited = build_subnet(str(tmp_path / "widths.json"), init_from_supernet=os.path.join(workdir, "supernet.keras"))
    fresh = Supernet(keras.models.load_model(os.path.join(workdir, "supernet.keras")))
    x = tf.random.normal((4, 12, 12, 1))
    np.testing.assert_allclose(inherited(x).numpy(), fresh(x, selection=fresh.selection(selection)).numpy(),
                               atol=1e-5)

    # Run again: everything comes from the cache and the state, the answer is the same.
    again = search_run.run(config, str(tmp_path), data=src)
    assert again["scored_this_run"] == 0  # the finished state and the cache answer everything
    assert again["groups"] == record["groups"]


@pytest.mark.parametrize("method", ["random", "greedy", "uniform"])
def test_baselines_run_on_the_same_job(trained, tmp_path, method):
    workdir, src = trained
    config = search_config(supernet=os.path.join(workdir, "supernet.keras"), method=method, random_samples=5,
                           greedy_step=0.5, num_candidates=1)
    record = search_run.run(config, str(tmp_path), data=src)
    assert record["method"] == method and record["macs"] <= 0.5 * record["full_macs"]
    assert [b["name"] for b in record["baselines"]] == ([] if method == "uniform" else ["uniform width"])
    assert len(record["score_record"]["candidates"]) == 1


def test_search_program_refuses_an_infeasible_budget(trained, tmp_path):
    workdir, _ = trained
    result = subprocess.run(
        [sys.executable, "-m", "cafe_tf.search", "--config", "configs/fashion_mnist_resnet20.py", "--workdir",
         str(tmp_path), f"--config.search.supernet={os.path.join(workdir, 'supernet.keras')}",
         "--config.search.max_macs=100"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "max_macs=100 is infeasible: it is below the smallest sub-network; the feasible range" in result.stderr
    assert not (tmp_path / "widths.json").exists()


def test_missing_supernet_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"supernet '.*supernet.keras' does not exist; train one"):
        search_run.run(search_config(), str(tmp_path))


def test_latency_budget_with_a_deploy_latency_table_file(space, tmp_path):
    latency_table = pytest.importorskip("deploy.latency_table")
    from cafe_tf import surgery

    # A table in the deploy format whose entries cost 1 ns per MAC, measured on a few uniform subnets.
    full = space.graph.model
    entries = {}
    for fraction in (1.0, 0.75, 0.5, 0.25):
        sub = surgery.extract(full, space.channels(space.fixed(space.uniform_widths(fraction))), graph=space.graph,
                              copy_weights=False)
        for key in latency_table.layer_keys(sub):
            entries[key] = 1e-6 * key.macs() + 1e-3
    path = str(tmp_path / "latency_table.json")
    latency_table.LatencyTable(entries, constant_ms=0.05, scale=1.0,
                               info={"target": "host", "quant": "fp32", "threads": 1, "method": "isolated",
                                     "model_fingerprint": latency_table.model_fingerprint(full)}).save(path)
    table = search_run.load_latency_predictor(path)
    checker = BudgetChecker(space, Budget(max_latency_ms=0.6 * table.predict_ms(full)), latency=table)
    checker.check_feasible()
    cache = ScoreCache(lambda w: float(np.sum(w)))
    evolve(checker, cache, EvolutionSettings(population=5, generations=2, parents=2, seed=0))
    bound = checker.budget.max_latency_ms
    for widths, _ in cache.items():
        assert 0.8 * bound <= checker.latency_ms(widths) <= bound


class ModelOnlyLatency:
    """A user's predictor: ``predict_ms(keras_model)`` only (no widths path), counting its calls."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def predict_ms(self, model):
        self.calls += 1
        return self.table.predict_ms(model)


def _wiggly_latency_table(space, fractions=(1.0, 0.75, 0.5, 0.25)):
    """A deploy-format table of uniform subnets (1 ns per MAC plus a wiggle): other widths are interpolated."""
    latency_table = pytest.importorskip("deploy.latency_table")
    from cafe_tf import surgery

    entries = {}
    for fraction in fractions:
        sub = surgery.extract(space.graph.model, space.channels(space.fixed(space.uniform_widths(fraction))),
                              graph=space.graph, copy_weights=False)
        for key in latency_table.layer_keys(sub):
            entries[key] = 1e-6 * key.macs() + 1e-3 * (1.5 + np.sin(key.cin + 3 * key.cout))
    return latency_table.LatencyTable(entries, constant_ms=0.05, scale=1.0)


def test_latency_widths_path_and_model_path_search_alike(space):
    table = _wiggly_latency_table(space)
    budget = Budget(max_latency_ms=0.6 * float(table.predict_widths_ms(space, space.num_bins)[0]))
    fast = BudgetChecker(space, budget, latency=table)
    user = ModelOnlyLatency(table)
    slow = BudgetChecker(space, budget, latency=user)
    assert (fast.latency_path, slow.latency_path) == ("widths", "model")
    assert BudgetChecker(space, budget, latency=table, build_model=fast._extract).latency_path == "model"
    assert fast.feasible_range() == slow.feasible_range()
    sampled = [c.sample(np.random.default_rng(1), 3) for c in (fast, slow)]
    np.testing.assert_array_equal(*sampled)
    over = np.minimum(sampled[0][0] + 1, space.num_bins)  # just above the window: a few repair moves
    repaired = [c.repair(over, np.random.default_rng(2)) for c in (fast, slow)]
    assert repaired[0] is not None and fast.in_window(repaired[0])
    np.testing.assert_array_equal(*repaired)
    settings = EvolutionSettings(population=4, generations=2, parents=2, seed=0)
    caches = [ScoreCache(preference(space, space.num_bins // 2)) for _ in range(2)]
    results = [evolve(c, cache, settings) for c, cache in zip((fast, slow), caches)]
    np.testing.assert_array_equal(results[0].widths, results[1].widths)
    assert results[0].history == results[1].history
    scored = [[tuple(w) for w, _ in cache.items()] for cache in caches]
    assert scored[0] == scored[1]
    calls = user.calls
    assert calls > 0 and [fast.latency_ms(w) for w in scored[0]] == [slow.latency_ms(w) for w in scored[0]]
    assert user.calls == calls  # every candidate the slow search judged was one model, predicted once


class UserDense(keras.layers.Dense):
    """A user's dense layer, registered with a rule that keys its latency by its config (units)."""


def test_latency_checker_falls_back_to_models_when_widths_cannot_be_followed():
    from cafe_tf import layers, surgery

    class ConfigKeyedDense(layers.DenseRule):
        latency_key = layers.LayerRule.latency_key  # "LAYER:UserDense" + its config, which holds its width

    L = keras.layers
    layers.register(UserDense, ConfigKeyedDense())
    try:
        x = inputs = keras.Input((8, 8, 3), name="image")
        x = L.Conv2D(8, 3, padding="same", name="c1")(x)
        x = UserDense(6, activation="relu", name="pointwise")(x)
        x = L.GlobalAveragePooling2D(name="gap")(x)
        model = keras.Model(inputs, L.Dense(4, name="logits")(x))
        space = SearchSpace(ChannelGraph.from_model(model))
        table = _wiggly_latency_table(space)
        checker = BudgetChecker(space, Budget(max_latency_ms=float(table.predict_ms(model))), latency=table)
        assert checker.latency_path == "model"
        widths = np.ones_like(space.num_bins)
        sub = surgery.extract(model, space.channels(space.fixed(widths)), graph=space.graph, copy_weights=False)
        assert checker.latency_batch(widths[None]).tolist() == [table.predict_ms(sub)]
    finally:
        layers.unregister(UserDense)


def test_retraining_flags_of_the_train_program(fashion_mnist_dir, tmp_path):
    from cafe_tf.space import write_widths

    # A cnn_small "supernet" for 28x28 images and a widths.json keeping half of every group.
    full = models.build("cnn_small", input_shape=(28, 28, 1), num_classes=10)
    full.save(tmp_path / "supernet.keras")
    graph = ChannelGraph.from_model(full)
    info = {"name": "cnn_small", "input_shape": [28, 28, 1], "num_classes": 10, "width_mult": 1.0}
    record = write_widths(tmp_path / "widths.json", graph,
                          {g.id: np.arange(0, g.size, 2) for g in graph.prunable_groups}, info)
    common = [sys.executable, "-m", "cafe_tf.cli.train", "--config", "configs/fashion_mnist_cnn.py",
              f"--config.data.data_dir={fashion_mnist_dir}", "--config.data.max_train_examples=256",
              "--config.data.max_eval_examples=128", "--config.train.epochs=1", "--config.data.cache=False",
              f"--widths={tmp_path / 'widths.json'}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(common + [f"--workdir={tmp_path / 'finetune'}",
                                      f"--init_from_supernet={tmp_path / 'supernet.keras'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = keras.models.load_model(tmp_path / "finetune" / "model.keras")
    assert count_keras_model(trained)["macs"] == record["macs"] and trained.count_params() == record["params"]
    bad = subprocess.run(common[:-1] + [f"--workdir={tmp_path / 'bad'}", "--init_from_supernet=/nope.keras"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "--init_from_supernet needs --widths" in bad.stderr
