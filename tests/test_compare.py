"""cafe_tf.compare: Kendall's tau, the ranking study's nets and scores, the uniform arm, the summary and the program's checks."""

import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cafe_tf import compare
from cafe_tf import config as cfg
from cafe_tf.io import write_json
from cafe_tf.search import run as search_run
from cafe_tf.space import read_widths
from cafe_tf.training import supernet as supernet_lib
from supernet_helpers import INFO, cnn, separable_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tau_by_definition(x, y):
    """Kendall's tau-b written out pair by pair."""
    nc = nd = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if a == 0 and b == 0:
            continue
        if a == 0:
            tx += 1
        elif b == 0:
            ty += 1
        elif a == b:
            nc += 1
        else:
            nd += 1
    return (nc - nd) / np.sqrt((nc + nd + tx) * (nc + nd + ty))


def test_kendall_tau_known_values():
    assert compare.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert compare.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # One swapped pair out of six: (5 - 1) / 6.
    assert compare.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert np.isnan(compare.kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one length"):
        compare.kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        compare.kendall_tau([1], [1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=12))
def test_kendall_tau_matches_the_pairwise_definition(pairs):
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    got = compare.kendall_tau(x, y)
    if len(set(x)) == 1 or len(set(y)) == 1:
        assert np.isnan(got)
    else:
        assert got == pytest.approx(tau_by_definition(x, y))
        assert -1 <= got <= 1
        assert compare.kendall_tau(y, x) == pytest.approx(got)


def test_bad_seeds_and_arms_are_named():
    assert compare.parse_seeds(["0", "3"]) == [0, 3]
    with pytest.raises(ValueError, match="--seeds=0,x"):
        compare.parse_seeds(["0", "x"])
    with pytest.raises(ValueError, match="distinct"):
        compare.parse_seeds(["1", "1"])
    assert compare.parse_arms(["fixed", "cafenet", "fixed"]) == ["fixed", "cafenet"]
    with pytest.raises(ValueError, match=r"--arms=autoslim.*'cafenet', 'fixed', 'uniform'"):
        compare.parse_arms(["autoslim"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A compare workdir whose two arms hold one small trained supernet (cnn_small, separable data)."""
    root = str(tmp_path_factory.mktemp("compare"))
    trained = os.path.join(root, "train")
    sec = supernet_lib.supernet_section()
    sec.update(dict(epochs=2, lr=0.05, log_every=6, eval_fractions=(), eval_min=False))
    supernet_lib.train(cnn, separable_source(), sec, trained, model_info=INFO)
    for variant in ("cafenet", "fixed"):
        folder = os.path.dirname(compare.supernet_path(root, variant))
        os.makedirs(folder)
        for name in ("supernet.keras", "supernet.json"):
            shutil.copy(os.path.join(trained, name), os.path.join(folder, name))
    return root


def search_config():
    c = cfg.base_config()
    c.data.batch_size = 16
    c.search = search_run.search_section()
    c.search.update(dict(calibration_examples=32, eval_examples=64))
    return c


TOL = 0.05  # the toy model's few bins cannot land every ranking target within 1%


def test_ranking_nets_spread_over_the_budget_and_are_scored_once(workdir):
    paths = compare.write_ranking_candidates(workdir, 4, 0.8, TOL, seed=0)
    records = [read_widths(p) for p in paths]
    full = records[0]["full_macs"]
    targets = np.linspace(*compare.RANKING_RANGE, 4) * 0.8 * full
    for rec, target in zip(records, targets):
        assert rec["target_macs"] == pytest.approx(target)
        assert (1 - TOL) * target <= rec["macs"] <= (1 + TOL) * target
    assert [r["macs"] for r in records] == sorted(r["macs"] for r in records)
    again = compare.write_ranking_candidates(workdir, 4, 0.8, TOL, seed=0)  # idempotent: nothing rewritten
    assert [read_widths(p) for p in again] == records

    named = {f"c{i}": rec for i, rec in enumerate(records)}
    scores = compare.score_nets(search_config(), workdir, "cafenet", named, data=separable_source())
    assert set(scores) == set(named) and all(0 <= s <= 1 for s in scores.values())
    cache = json.load(open(os.path.join(workdir, "ranking", "scores_cafenet.json")))
    assert len(cache["records"]) == 4 and cache["fingerprint"]["scoring"] == "equal"
    assert all(len(r["candidates"]) == 2 for r in cache["records"].values())  # K = 2 evaluations each
    # A second call reads the cache: same scores, even with a scorer that would fail.
    assert compare.score_nets(search_config(), workdir, "cafenet", named, data=separable_source()) == scores


def test_uniform_arm_and_scoring_noise(workdir):
    path = compare.write_uniform(workdir, 0.5, TOL, 1)
    rec = read_widths(path)
    assert abs(rec["macs"] - 0.5 * rec["full_macs"]) <= TOL * 0.5 * rec["full_macs"]
    assert rec["method"] == "uniform (bisection)" and 0 < rec["width_factor"] < 1
    assert all(g["channels"] == list(range(len(g["channels"]))) for g in rec["groups"])  # leftmost channels
    # The noise of one network's score: the cafenet arm's net under 3 calibration sets.
    os.makedirs(compare.arm_dir(workdir, 0.5, "cafenet"), exist_ok=True)
    shutil.copy(compare.write_ranking_candidates(workdir, 4, 0.8, TOL, seed=0)[3],
                os.path.join(compare.arm_dir(workdir, 0.5, "cafenet"), "widths.json"))
    noise = compare.scoring_noise(search_config(), workdir, 0.5, "cafenet", 3, data=separable_source())
    assert len(noise["scores"]) == 3 and noise["std"] == pytest.approx(np.std(noise["scores"], ddof=1))
    assert noise["calibration_examples"] == 32 and noise["supernet"] == "cafenet"
    assert compare.scoring_noise(search_config(), workdir, 0.5, "cafenet", 3) == noise  # cached: no data needed
    assert compare.scoring_noise(search_config(), workdir, 0.5, "uniform", 3) is None  # no supernet scores it


def test_bins_in_refuses_widths_off_the_bins(workdir):
    _, _, _, _, space = search_run.load_supernet(compare.supernet_path(workdir, "cafenet"))
    rec = read_widths(compare.write_ranking_candidates(workdir, 4, 0.8, TOL, seed=0)[0])
    bins = compare.bins_in(space, rec)
    assert [int(space.groups[i].bounds[b]) for i, b in enumerate(bins)] == [len(g["channels"]) for g in rec["groups"]]
    rec = json.loads(json.dumps(rec))
    rec["groups"][0]["channels"] = list(range(rec["groups"][0]["size"] + 1))  # more channels than the group has
    with pytest.raises(ValueError, match=rf"group {rec['groups'][0]['name']!r} has \d+ channels, not a bin bound"):
        compare.bins_in(space, rec)


def fake_metrics(path, accuracy):
    write_json(path, {"final": {"test": {"accuracy": accuracy, "loss": 0.3}}})


def test_summary_means_paired_differences_and_ranking_from_the_artifacts(workdir, tmp_path):
    root = str(tmp_path)
    paths = compare.write_ranking_candidates(workdir, 4, 0.8, TOL, seed=0)
    for arm in ("cafenet", "fixed"):
        os.makedirs(compare.arm_dir(root, 0.8, arm))
        shutil.copy(paths[3 if arm == "cafenet" else 2], os.path.join(compare.arm_dir(root, 0.8, arm), "widths.json"))
    accs = {"cafenet": [0.91, 0.93, 0.92], "fixed": [0.90, 0.89, None]}
    for arm, values in accs.items():
        for seed, acc in enumerate(values):
            if acc is not None:
                fake_metrics(os.path.join(compare.arm_dir(root, 0.8, arm), f"retrain_s{seed}", "metrics.json"), acc)
    for i, p in enumerate(paths):
        os.makedirs(os.path.join(root, "ranking", f"c{i}"))
        shutil.copy(p, os.path.join(root, "ranking", f"c{i}", "widths.json"))
        fake_metrics(os.path.join(root, "ranking", f"c{i}", "retrain", "metrics.json"), 0.8 + 0.02 * i)
    scores = {"cafenet": {"c0": 0.5, "c1": 0.6, "c2": 0.7, "c3": 0.8},
              "fixed": {"c0": 0.8, "c1": 0.7, "c2": 0.6, "c3": 0.5}}
    noise = {"cafenet": {"supernet": "cafenet", "repeats": 3, "calibration_examples": 32, "eval_examples": 64,
                         "mean": 0.5, "std": 0.01}}
    c = search_config()
    c.model = cfg.base_config().model
    summary = compare.summarize(c, root, ["cafenet", "fixed"], [0.8], [0, 1, 2], 4, scores, noise, TOL)
    cafenet, fixed = summary["arms"]["0.8"]["cafenet"], summary["arms"]["0.8"]["fixed"]
    assert cafenet["mean"] == pytest.approx(0.92) and cafenet["std"] == pytest.approx(0.01) and cafenet["runs"] == 3
    assert fixed["mean"] == pytest.approx(0.895) and fixed["runs"] == 2 and fixed["test_accuracy"]["2"] is None
    assert cafenet["macs"] == read_widths(paths[3])["macs"] and cafenet["in_band"]
    assert cafenet["macs_vs_target"] == pytest.approx(cafenet["macs"] / (0.8 * cafenet["full_macs"]))
    assert not fixed["in_band"]  # c2 targets 0.87x the budget
    paired = summary["paired"]["0.8"]["fixed"]
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(((0.90 - 0.91) + (0.89 - 0.93)) / 2)
    nets = summary["ranking"]["nets"]
    assert [n["name"] for n in nets] == ["c0", "c1", "c2", "c3"]
    stats = summary["ranking"]["stats"]
    assert stats["cafenet"]["kendall_tau"] == 1.0 and stats["fixed"]["kendall_tau"] == -1.0
    assert stats["cafenet"]["spearman_rho"] == 1.0 and stats["fixed"]["spearman_rho"] == -1.0
    lo, hi = stats["cafenet"]["kendall_tau_ci"]
    assert lo <= 1.0 <= hi

    compare.write_summary(root, summary)
    md = open(os.path.join(root, "compare.md")).read()
    assert "| 0.8 | cafenet |" in md and "92.00 ± 1.00" in md and "| 0.8 | fixed | 2 | -2.50 |" in md
    assert "| cafenet | 1.000 |" in md and "| cafenet | cafenet | 3 | 32 | 64 | 50.00 | 1.00 |" in md
    assert open(os.path.join(root, "compare.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(os.path.join(root, "compare.json")))["arms"]["0.8"]["fixed"]["runs"] == 2


def test_program_refuses_bad_flags_before_any_work(tmp_path):
    base = [sys.executable, "-m", "cafe_tf.compare", "--config", os.path.join(REPO, "configs", "fashion_mnist_resnet20.py"),
            f"--workdir={tmp_path}"]
    # (--seeds and --budgets are parsed by functions tested above; one subprocess each costs ~10 s of start-up)
    for extra, message in ((["--arms=cafenet,autoslim"], "--arms=cafenet,autoslim is invalid"),
                           (["--budgets=0.5,1.5"], "--budgets=0.5,1.5 is invalid"),
                           (["--macs_tolerance=0.7"], "--macs_tolerance=0.7 is invalid")):
        result = subprocess.run(base + extra, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
    assert not {"supernets", "budget_0.5", "compare.json"} & set(os.listdir(tmp_path))
