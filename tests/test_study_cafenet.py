"""The CafeNet study's cell kinds on tiny data, the pilot's plan, and the supernet's macs_range sampling."""

import json
import os

import numpy as np
import pytest

from cafe_tf.study import cafenet, ledger, runner
from cafe_tf.study import manifest as manifest_lib


def _resnet20_space(max_bin=8):
    from cafe_tf.graph import ChannelGraph
    from cafe_tf.models import source as source_lib
    from cafe_tf.space import SearchSpace

    model = source_lib.resolve("resnet20", (28, 28, 1), 10).build()
    return SearchSpace(ChannelGraph.from_model(model), max_bin=max_bin)


def test_macs_range_sampling_covers_the_range():
    from cafe_tf.training.supernet import MinMinOptions, sample_widths

    space = _resnet20_space()
    full = float(space.cost.macs())
    rng = np.random.default_rng(0)
    opts = MinMinOptions(sampling="macs_range", macs_range=(0.1, 0.3))
    ratios = np.array([space.macs(sample_widths(space, rng, opts)) / full for _ in range(300)])
    assert np.mean((ratios > 0.09) & (ratios < 0.31)) > 0.97
    # Uniform over the range: each third of it holds about a third of the nets.
    thirds = np.histogram(ratios, bins=[0.1, 0.1667, 0.2333, 0.3])[0] / len(ratios)
    assert np.all(np.abs(thirds - 1 / 3) < 0.1), thirds
    # The paper's rule is unchanged: the same draws as the space's own sampler.
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert np.array_equal(sample_widths(space, a, MinMinOptions()), space.sample_widths(b))
    uniform = np.array([space.macs(space.sample_widths(rng)) / full for _ in range(300)])
    assert np.mean((uniform > 0.1) & (uniform < 0.3)) < 0.6  # what macs_range exists to fix
    with pytest.raises(ValueError, match="macs_range"):
        MinMinOptions(sampling="macs_range", macs_range=(0.4, 0.2))
    with pytest.raises(ValueError, match="sampling"):
        MinMinOptions(sampling="gaussian")


def test_macs_range_config_validated_and_recorded():
    from cafe_tf.config import ConfigError
    from cafe_tf.training.supernet import _options, settings_of, supernet_section, validate_supernet

    section = supernet_section()
    assert section.sampling == "uniform" and "sampling" not in settings_of(section)
    section.sampling, section.macs_range = "macs_range", (0.05, 0.3)
    validate_supernet(section)
    assert _options(section).macs_range == (0.05, 0.3)
    assert settings_of(section)["sampling"] == "macs_range" and settings_of(section)["macs_range"] == [0.05, 0.3]
    section.macs_range = (0.3, 1.2)
    with pytest.raises(ConfigError, match="macs_range"):
        validate_supernet(section)
    section.macs_range, section.sampling = (0.05, 0.3), "nope"
    with pytest.raises(ConfigError, match="sampling"):
        validate_supernet(section)


def test_uniform_and_pool_nets_lie_in_the_band():
    space = _resnet20_space()
    full = float(space.cost.macs())
    target = 0.2 * full
    u = cafenet.uniform_bins(space, target, 0.01)
    assert abs(space.macs(u) - target) <= 0.01 * target
    rng = np.random.default_rng(0)
    near = cafenet.near_uniform_bins(space, target, 0.01, rng, 4)
    rand = cafenet.random_bins(space, target, 0.01, rng, 4)
    for w in near + rand:
        assert abs(space.macs(w) - target) <= 0.01 * target
    for w in near:
        assert np.all(np.abs(w - u) <= 1) and not np.array_equal(w, u)
    entry = cafenet.pool_entry(space, "x", u, "uniform", 0.2)
    assert entry["macs"] == int(space.macs(u)) and len(entry["channels"]) == len(space.groups)


def test_pilot_plan_is_complete_and_valid(tmp_path):
    m = cafenet.pilot_manifest("0" * 40)
    study = tmp_path / "p"
    study.mkdir()
    (study / "manifest.json").write_text(json.dumps(m))
    loaded = manifest_lib.load(str(study))  # schema, recipe hash, cells and dependencies
    table = manifest_lib.cell_table(loaded)
    ids = {e["id"] for e in loaded["pool"]}
    refs = [r for c in loaded["claims"] for item in c.get("pairs", []) + c.get("values", [])
            for r in (item if isinstance(item, list) else [item])]
    assert refs and all(r.split(":")[0] in table for r in refs)  # every claim reads planned cells
    for cid, entry in table.items():
        for net in entry["params"].get("nets", []) + ([entry["params"]["net"]] if "net" in entry["params"] else []):
            assert net in ids, (cid, net)
    for b in (0.2, 0.1):
        nets = [e for e in loaded["pool"] if e["budget"] == b]
        assert len(nets) >= 12 and all(abs(e["macs_ratio"] - b) <= 0.01 * b for e in nets)
    assert "selection_rules" in loaded and {"budget", "zone", "sampling"} <= set(loaded["selection_rules"])


@pytest.fixture
def tiny_study(tmp_path, fashion_mnist_dir):
    """A study folder whose recipe trains on 256 Fashion-MNIST images and scores on 200."""
    recipe = {"config": "configs/fashion_mnist_resnet20.py",
              "overrides": {"data.data_dir": fashion_mnist_dir, "data.max_train_examples": 256,
                            "supernet.max_bin": 8, "supernet.eval_examples": 100, "supernet.calibration_examples": 64,
                            "supernet.checkpoint_every": 0, "search.eval_examples": 200,
                            "search.calibration_examples": 64, "search.screen_fraction": 1.0}}
    def make(cells, pool_budget=0.2):
        config = cafenet.make_config(recipe)
        _, space = cafenet.make_space(config)
        target = pool_budget * float(space.cost.macs())
        pool = [cafenet.pool_entry(space, "full", space.num_bins, "full", None),
                cafenet.pool_entry(space, "u", cafenet.uniform_bins(space, target, 0.01), "uniform", pool_budget),
                cafenet.pool_entry(space, "r0", cafenet.random_bins(space, target, 0.01,
                                                                   np.random.default_rng(0), 1)[0], "random", pool_budget)]
        m = {"schema": manifest_lib.SCHEMA, "schema_version": manifest_lib.VERSION, "name": "tiny", "commit": "0" * 40,
             "modules": ["cafe_tf.study.cafenet"], "recipe": recipe, "recipe_sha256": manifest_lib.recipe_sha256(recipe),
             "pool": pool, "cells": cells, "claims": []}
        study = tmp_path / "tiny"
        study.mkdir()
        (study / "manifest.json").write_text(json.dumps(m))
        return str(study)
    return make


@pytest.mark.slow  # minutes on 2 shared cores: three models traced, a supernet trained and scored
def test_cells_train_a_net_train_a_supernet_and_score_it(tiny_study):
    study = tiny_study([
        {"id": "net_u", "kind": "cafenet_train_net", "params": {"net": "u", "seed": 0, "epochs": 1}},
        {"id": "sup", "kind": "cafenet_supernet",
         "params": {"overrides": {"supernet.zone_unit": "bins", "supernet.sampling": "macs_range",
                                  "supernet.macs_range": [0.1, 0.3]}, "seed": 0, "epochs": 1}},
        {"id": "score", "kind": "cafenet_score", "params": {"supernet": "sup", "nets": ["u", "r0"]}, "after": ["sup"]},
    ])
    rec = runner.run_cell(study, "net_u")
    m = manifest_lib.load(study)
    assert rec["result"]["macs"] == cafenet.pool_net(m, "u")["macs"]
    assert 0.0 <= rec["result"]["val_accuracy"] <= 1.0 and "test" not in json.dumps(rec["result"])
    rec = runner.run_cell(study, "sup")
    assert set(rec["artifacts"]) == {"supernet.keras", "supernet.json"}
    assert rec["result"]["summary"]["settings"]["sampling"] == "macs_range"
    assert rec["result"]["summary"]["space"]["zone_unit"] == "bins" and rec["result"]["summary"]["space"]["max_bin"] == 8
    rec = runner.run_cell(study, "score")
    scores = rec["result"]["scores"]
    assert set(scores) == {"u", "r0"} and all(0.0 <= v <= 1.0 for v in scores.values())
    # A supernet whose bytes changed is refused when read.
    with open(os.path.join(study, "artifacts", "sup", "supernet.keras"), "ab") as f:
        f.write(b"x")
    os.remove(ledger.cell_path(study, "score"))
    with pytest.raises(Exception, match="changed after the cell ran"):
        runner.run_cell(study, "score")


@pytest.mark.slow  # minutes on 2 shared cores: a supernet trained over two cells
def test_supernet_unit_pauses_after_an_epoch_and_the_next_cell_resumes(tiny_study):
    params = {"overrides": {"supernet.zone_unit": "bins"}, "seed": 0, "epochs": 2}
    study = tiny_study([
        {"id": "sup_a", "kind": "cafenet_supernet", "unit": "sup", "params": {**params, "stop_after_epoch": 1}},
        {"id": "sup_b", "kind": "cafenet_supernet", "unit": "sup", "params": params},
    ])
    first = runner.run_cell(study, "sup_a")
    steps = first["result"]["paused_at_step"]
    assert steps == 2 and first["result"]["epochs_done"] == 1  # 256 images, batch 128: 2 steps an epoch
    assert first["artifacts"] == {}
    names = set(first["checkpoint"])
    assert {"checkpoint", "supernet_settings.json"} <= names and any(n.startswith(f"ckpt-{steps}.") for n in names)
    assert all(e["path"].startswith(os.path.join("checkpoints", "sup", "sup_a")) for e in first["checkpoint"].values())
    second = runner.run_cell(study, "sup_b")
    assert second["result"]["resumed_from"] == "sup_a"
    assert second["result"]["summary"]["steps"] == 2 * steps  # went on from step 2, not from 0
    assert set(second["artifacts"]) == {"supernet.keras", "supernet.json"}
