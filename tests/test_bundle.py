"""cafe_tf.bundle: config section, manifest round trip, missing and changed files, pick(), shared scores,
the stages each entry runs, deploy.benchmark --bundle, and (slow) a tiny bundle end to end."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cafe_tf import bundle as bundle_lib
from cafe_tf.config import ConfigError
from config_helpers import demo_config
from cafe_tf.io import ArtifactError, file_sha256, read_artifact, write_artifact
from cafe_tf.search.budget import BudgetError
from cafe_tf.search.evaluator import CACHE_SCHEMA, CACHE_VERSION

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
L = keras.layers




def section(**values):
    s = bundle_lib.bundle_section()
    for k, v in values.items():
        s[k] = v
    return s


def entry(ident, macs, test, file=None, sha="0" * 64, latency=None):
    return {"id": ident, "budget_ratio": macs / 100, "max_macs": macs, "macs": macs, "params": 10 * macs,
            "widths": [{"name": "conv1", "size": 32, "width": 8}], "accuracy": {"test": test},
            "file": file or f"{ident}.tflite", "sha256": sha,
            "latency": {} if latency is None else {"host": {"latency_ms": {"p50": latency, "mean": latency}}}}


def manifest(entries):
    return {"model": {"name": "cnn_small"}, "format": "fp32", "full_macs": 100, "entries": entries}


def write_files(folder, names):
    """Writes a file per name (its own bytes); returns the SHA-256 of each."""
    shas = []
    for i, name in enumerate(names):
        (folder / name).write_bytes(f"model {i}".encode())
        shas.append(file_sha256(folder / name))
    return shas


# -------------------------------------------------------------------------------------------- config


def test_budgets_from_the_config():
    assert bundle_lib.resolve_budgets(section()) == [0.333, 0.667, 1.0]  # size 3 by default
    assert bundle_lib.resolve_budgets(section(size=4)) == [0.25, 0.5, 0.75, 1.0]
    assert bundle_lib.resolve_budgets(section(budgets=(0.7, 0.3, 0.5))) == [0.3, 0.5, 0.7]  # budgets win over size
    assert [bundle_lib.budget_id(b) for b in (0.3, 1 / 3, 1.0, 0.05)] == ["macs30", "macs33.3", "macs100", "macs5"]
    bundle_lib.validate_bundle(demo_config().bundle)


@pytest.mark.parametrize("budgets, message", [
    ((0.3, 0.0), "config.bundle.budgets=(0.3, 0.0) is invalid: 0.0 is not a fraction of the full net's MACs in (0, 1]"),
    ((1.5,), "config.bundle.budgets=(1.5,) is invalid: 1.5 is not a fraction of the full net's MACs in (0, 1]"),
    ((0.5, -0.2), "config.bundle.budgets=(0.5, -0.2) is invalid: -0.2 is not a fraction of the full net's MACs in (0, 1]"),
    ((0.3, 0.5, 0.3), "config.bundle.budgets=(0.3, 0.5, 0.3) is invalid: 0.3 and 0.3 are the same budget (macs30: "
                      "budgets are told apart to 0.1% of the MACs)"),
    ((0.5, 0.50001), "config.bundle.budgets=(0.5, 0.50001) is invalid: 0.5 and 0.50001 are the same budget (macs50: "
                     "budgets are told apart to 0.1% of the MACs)"),
])
def test_bad_budgets_are_named(budgets, message):
    with pytest.raises(ConfigError, match=re.escape(message) + "$"):
        bundle_lib.validate_bundle(section(budgets=budgets))


def test_bad_bundle_settings_are_named():
    with pytest.raises(ConfigError, match=r"^config.bundle.size=0 is invalid; it must be >= 1 \(or give "
                                          r"config.bundle.budgets\)$"):
        bundle_lib.validate_bundle(section(size=0))
    with pytest.raises(ConfigError, match=r"^config.bundle.format='qat' is invalid; valid values: "
                                          r"\['fp32', 'fp16', 'dynamic', 'int8'\]$"):
        bundle_lib.validate_bundle(section(format="qat"))
    with pytest.raises(ConfigError, match=r"^config.bundle.benchmark_rounds=9 is invalid; it must be <= "
                                          r"config.bundle.benchmark_runs \(8\)$"):
        bundle_lib.validate_bundle(section(benchmark_runs=8, benchmark_rounds=9))


def test_a_budget_below_the_smallest_net_is_refused_before_any_search():
    bundle_lib.check_budgets([0.2, 0.5], full_macs=1000, smallest_macs=200)
    with pytest.raises(BudgetError, match=re.escape("config.bundle budget 0.1 x 1,000 MACs = 100 MACs is below the "
                                                    "smallest sub-network (200 MACs); the feasible fractions are "
                                                    "[0.200, 1]")):
        bundle_lib.check_budgets([0.1, 0.5], full_macs=1000, smallest_macs=200)


# -------------------------------------------------------------------------------------------- manifest


def test_manifest_round_trip(tmp_path):
    shas = write_files(tmp_path, ["a.tflite", "b.tflite"])
    written = manifest([entry("macs30", 30, 0.8, "a.tflite", shas[0], 0.5), entry("macs60", 60, 0.9, "b.tflite", shas[1])])
    bundle_lib.write_bundle(tmp_path / "bundle.json", written)
    loaded = bundle_lib.load_bundle(tmp_path / "bundle.json")
    assert [e.pop("path") for e in loaded["entries"]] == [str(tmp_path / "a.tflite"), str(tmp_path / "b.tflite")]
    assert loaded == {"schema": "cafe_tf.bundle", "schema_version": 1, **written}
    # the manifest is portable: moved with its files, it still loads
    shutil.move(tmp_path, tmp_path.parent / "moved")
    moved = bundle_lib.load_bundle(tmp_path.parent / "moved" / "bundle.json")
    assert moved["entries"][1]["path"] == str(tmp_path.parent / "moved" / "b.tflite")


def test_a_missing_file_names_the_entry(tmp_path):
    shas = write_files(tmp_path, ["a.tflite", "b.tflite"])
    bundle_lib.write_bundle(tmp_path / "bundle.json", manifest([entry("macs30", 30, 0.8, "a.tflite", shas[0]),
                                                                entry("macs60", 60, 0.9, "b.tflite", shas[1])]))
    os.remove(tmp_path / "b.tflite")
    with pytest.raises(ArtifactError, match=re.escape(f"bundle {str(tmp_path / 'bundle.json')!r}: entry 'macs60': "
                                                      f"file {str(tmp_path / 'b.tflite')!r} is missing") + "$"):
        bundle_lib.load_bundle(tmp_path / "bundle.json")
    assert len(bundle_lib.load_bundle(tmp_path / "bundle.json", check_files=False)["entries"]) == 2


def test_a_changed_file_names_the_entry_and_both_hashes(tmp_path):
    shas = write_files(tmp_path, ["a.tflite"])
    bundle_lib.write_bundle(tmp_path / "bundle.json", manifest([entry("macs30", 30, 0.8, "a.tflite", shas[0])]))
    (tmp_path / "a.tflite").write_bytes(b"another model")
    now = file_sha256(tmp_path / "a.tflite")
    with pytest.raises(ArtifactError, match=re.escape(
            f"bundle {str(tmp_path / 'bundle.json')!r}: entry 'macs30': file {str(tmp_path / 'a.tflite')!r} changed "
            f"since the bundle was written: SHA-256 {shas[0]} recorded, {now} now") + "$"):
        bundle_lib.load_bundle(tmp_path / "bundle.json")


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(entries=[]), "'entries' must be a non-empty list"),
    (lambda m: m["entries"].append(dict(m["entries"][0])), "entry id 'macs30' appears twice"),
    (lambda m: m["entries"][0].update(file="../a.tflite"), "entry 'macs30': file '../a.tflite' must be a path "
                                                           "relative to the manifest's folder"),
    (lambda m: m["entries"][0].update(sha256="abc"), "entry 'macs30': sha256 'abc' is not a hex SHA-256"),
    (lambda m: m["entries"][0].update(macs=0), "entry 'macs30': macs=0 must be a positive integer"),
    (lambda m: m["entries"][0].pop("latency"), "entries[0] lacks ['latency']"),
    (lambda m: m["entries"][0].update(accuracy={}), "entry 'macs30': accuracy must hold the retrained net's 'test' "
                                                    "accuracy"),
    (lambda m: m["entries"][0].update(latency={"host": {"latency_ms": {}}}),
     "entry 'macs30': latency['host'] lacks latency_ms with one of ['p50', 'mean']"),
])
def test_a_bad_manifest_is_refused_and_never_written(tmp_path, change, message):
    bad = manifest([entry("macs30", 30, 0.8)])
    change(bad)
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        bundle_lib.write_bundle(tmp_path / "bundle.json", bad)
    assert not os.listdir(tmp_path)  # nothing written, not even a temporary file
    write_artifact(tmp_path / "bundle.json", "cafe_tf.bundle", 1, bad)  # as if written by hand
    with pytest.raises(ArtifactError, match=re.escape(f"{str(tmp_path / 'bundle.json')!r} is invalid: {message}")):
        bundle_lib.load_bundle(tmp_path / "bundle.json", check_files=False)


# -------------------------------------------------------------------------------------------- pick


def test_pick_the_most_accurate_entry_that_fits():
    b = manifest([entry("macs30", 30, 0.80, latency=0.4), entry("macs50", 50, 0.86, latency=0.7),
                  entry("macs70", 70, 0.85, latency=0.9), entry("macs100", 100, 0.90, latency=1.5)])
    assert bundle_lib.pick(b, max_latency_ms=2.0)["id"] == "macs100"
    assert bundle_lib.pick(b, max_latency_ms=1.0)["id"] == "macs50"  # macs70 fits too but is less accurate
    assert bundle_lib.pick(b, max_latency_ms=0.7)["id"] == "macs50"  # the bound is inclusive
    assert bundle_lib.pick(b, max_latency_ms=0.5)["id"] == "macs30"
    assert bundle_lib.pick(b, max_latency_ms=0.3) is None
    with pytest.raises(ValueError, match=r"^max_latency_ms=0 is invalid; it must be a number > 0$"):
        bundle_lib.pick(b, max_latency_ms=0)
    with pytest.raises(ValueError, match=re.escape("bundle entries ['macs30', 'macs50', 'macs70', 'macs100'] have no "
                                                   "latency measured on target 'pixel7' (measured: ['host'])")):
        bundle_lib.pick(b, max_latency_ms=1.0, target="pixel7")


def test_pick_falls_back_to_the_mean_and_breaks_ties_by_speed():
    b = manifest([entry("macs30", 30, 0.85, latency=0.4), entry("macs50", 50, 0.85, latency=0.3)])
    b["entries"][0]["latency"]["host"]["latency_ms"] = {"p50": None, "mean": 0.2}  # a target with no p50
    assert bundle_lib.entry_latency_ms(b["entries"][0], "host") == 0.2
    assert bundle_lib.pick(b, max_latency_ms=1.0)["id"] == "macs30"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 1.0), st.floats(0.05, 5.0)), min_size=1, max_size=8),
       st.floats(0.05, 6.0))
def test_pick_is_the_best_entry_within_the_budget(measured, budget):
    b = manifest([entry(f"e{i}", 10 + i, acc, latency=ms) for i, (acc, ms) in enumerate(measured)])
    chosen = bundle_lib.pick(b, max_latency_ms=budget)
    fits = [e for e in b["entries"] if bundle_lib.entry_latency_ms(e, "host") <= budget]
    if not fits:
        assert chosen is None
    else:
        assert bundle_lib.entry_latency_ms(chosen, "host") <= budget
        assert chosen["accuracy"]["test"] == max(e["accuracy"]["test"] for e in fits)


def test_dominated_entries_are_marked():
    entries = [entry("macs30", 30, 0.85), entry("macs50", 50, 0.84), entry("macs70", 70, 0.85), entry("macs90", 90, 0.9)]
    bundle_lib.mark_dominated(entries)
    assert [e["dominated_by"] for e in entries] == [[], ["macs30"], ["macs30"], []]


# -------------------------------------------------------------------------------------------- the program's parts


def test_entry_stages_search_retrain_and_export_at_the_budget(tmp_path):
    config = demo_config(**{"bundle.format": "int8", "retrain.init_from_supernet": True})
    search, retrain, export, verify = bundle_lib.entry_stages(config, str(tmp_path), ["--config=C.py", "--config.train.epochs=1"],
                                                      0.3, 9_300_000, "/s/supernet.keras", "f" * 64)
    work = tmp_path / "bundle" / "work" / "macs30"
    assert search.command == ["-m", "cafe_tf.search", "--config=C.py", "--config.train.epochs=1", f"--workdir={work}",
                              "--config.search.max_macs=9300000", "--config.search.supernet=/s/supernet.keras"]
    assert search.artifact == str(work / "widths.json")
    assert retrain.command == ["-m", "cafe_tf.cli.train", "--config=C.py", "--config.train.epochs=1",
                               f"--workdir={work / 'retrain'}", f"--widths={work / 'widths.json'}",
                               "--init_from_supernet=/s/supernet.keras"]
    assert export.artifact == str(tmp_path / "bundle" / "macs30_int8.tflite")
    assert "--quant=int8" in export.command and f"--model={work / 'retrain' / 'model.keras'}" in export.command
    assert "--num_calibration=200" in export.command and "--input_scaling=mean_std" in export.command
    assert verify.artifact == str(work / "verify_int8.json")
    assert f"--tflite={export.artifact}" in verify.command and "--report_only" in verify.command  # int8: reported
    assert "--num_batches=10" in verify.command and "--batch_size=100" in verify.command


def test_an_entry_step_is_redone_when_its_input_is_newer_or_its_file_changed(tmp_path):
    import zipfile

    config = demo_config()
    work = tmp_path / "bundle" / "work" / "macs50"
    (work / "retrain").mkdir(parents=True)
    (work / "widths.json").write_text("{}")
    with zipfile.ZipFile(work / "retrain" / "model.keras", "w") as z:
        z.writestr("config.json", "{}")
    write_artifact(work / "retrain" / "metrics.json", "metrics", 1, {"final": {"test": {"accuracy": 0.9}}})
    tflite = tmp_path / "bundle" / "macs50_fp32.tflite"
    tflite.write_bytes(b"\0\0\0\0TFL3 a model")

    def stages(recorded=None):
        return bundle_lib.entry_stages(config, str(tmp_path), [], 0.5, 100, "/s.keras", "f" * 64, recorded)

    def touch(path, t):
        os.utime(path, (t, t))

    for i, path in enumerate([work / "widths.json", work / "retrain" / "model.keras", tflite]):
        touch(path, 1000 + i)
    _, retrain, export, _ = stages()
    assert retrain.is_done() and export.is_done()
    touch(work / "widths.json", 2000)  # searched again: retrain again
    assert not stages()[1].is_done()
    touch(work / "widths.json", 1000)
    recorded = {"keras_sha256": file_sha256(work / "retrain" / "model.keras"), "sha256": file_sha256(tflite)}
    assert stages(recorded)[2].is_done()
    tflite.write_bytes(b"\0\0\0\0TFL3 changed by hand")
    touch(tflite, 1002)
    assert not stages(recorded)[2].is_done()  # the manifest's file from this very model: export again
    assert stages({**recorded, "keras_sha256": "0" * 64})[2].is_done()  # a new model was exported since


def test_searches_at_other_budgets_share_their_scores(tmp_path):
    def cache(path, sha, records, seed=0):
        write_artifact(path, CACHE_SCHEMA, CACHE_VERSION, {"fingerprint": {"supernet_sha256": sha, "seed": seed},
                                                           "records": records})

    cache(tmp_path / "a.json", "s1", {"1,2": {"score": 0.5}})
    cache(tmp_path / "b.json", "s1", {"2,2": {"score": 0.6}, "1,2": {"score": 0.5}})
    cache(tmp_path / "other_supernet.json", "s2", {"3,3": {"score": 0.7}})
    cache(tmp_path / "other_setting.json", "s1", {"4,4": {"score": 0.8}}, seed=1)
    dest = tmp_path / "entry" / "search_cache.json"
    sources = [str(tmp_path / n) for n in ("a.json", "other_supernet.json", "b.json", "other_setting.json", "none.json")]
    assert bundle_lib.seed_score_cache(str(dest), sources, "s1") == 2
    stored = read_artifact(dest, CACHE_SCHEMA, (CACHE_VERSION,))
    assert stored["fingerprint"] == {"supernet_sha256": "s1", "seed": 0}
    assert stored["records"] == {"1,2": {"score": 0.5}, "2,2": {"score": 0.6}}
    assert bundle_lib.seed_score_cache(str(dest), sources, "s1") == 0  # an entry's own cache is never replaced
    assert bundle_lib.seed_score_cache(str(tmp_path / "x.json"), sources, "s3") == 0
    assert not (tmp_path / "x.json").exists()


# -------------------------------------------------------------------------------------------- deploy.benchmark --bundle


def tiny_net(width: int) -> keras.Model:
    x = inputs = keras.Input((12, 12, 1))
    x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(4)(x))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A manifest of two real fp32 .tflite files (4 and 32 channels), not yet timed."""
    from deploy import export

    folder = tmp_path_factory.mktemp("bundle")
    entries = []
    for width, acc in ((4, 0.7), (32, 0.8)):
        name = f"w{width}_fp32.tflite"
        export.export_tflite(tiny_net(width), "fp32", str(folder / name))
        entries.append(entry(f"w{width}", width, acc, name, file_sha256(folder / name)))
    bundle_lib.write_bundle(folder / "bundle.json", manifest(entries))
    return folder


def benchmark(path, *extra):
    return subprocess.run([sys.executable, "-m", "deploy.benchmark", "--target=host", f"--bundle={path}", "--runs=6",
                           "--rounds=2", *extra], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_benchmark_times_a_whole_bundle_into_its_manifest(tiny_bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    with pytest.raises(ValueError, match="entry 'w4' has no host latency of its current file"):
        bundle_lib.is_timed(str(folder / "bundle.json"))
    proc = benchmark(folder / "bundle.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"benchmark: wrote the host latencies into {folder / 'bundle.json'}" in proc.stdout
    bundle_lib.is_timed(str(folder / "bundle.json"))
    timed = bundle_lib.load_bundle(folder / "bundle.json")
    for e in timed["entries"]:
        host = e["latency"]["host"]
        assert host["sha256"] == e["sha256"] and (host["runs"], host["rounds"], host["threads"]) == (6, 2, 1)
        assert 0 < host["latency_ms"]["min"] <= host["latency_ms"]["p50"] <= host["latency_ms"]["max"]
        assert host["environment"]["cpu"] and "cpu_features" in host["environment"]
    # everything but the latencies is as it was
    before = json.loads((tiny_bundle / "bundle.json").read_text())
    after = json.loads((folder / "bundle.json").read_text())
    assert [{k: v for k, v in e.items() if k != "latency"} for e in after["entries"]] == [
        {k: v for k, v in e.items() if k != "latency"} for e in before["entries"]]
    chosen = bundle_lib.pick(timed, max_latency_ms=1e3)
    assert chosen["id"] == "w32"  # the more accurate one, when both fit


def test_benchmark_refuses_a_changed_bundle_and_writes_nothing(tiny_bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    before = (folder / "bundle.json").read_bytes()
    shutil.copy(folder / "w4_fp32.tflite", folder / "w32_fp32.tflite")  # a valid model, but not the one recorded
    proc = benchmark(folder / "bundle.json")
    assert proc.returncode == 1, proc.stderr
    recorded = json.loads(before)["entries"][1]["sha256"]
    assert (f"benchmark: error: bundle {str(folder / 'bundle.json')!r}: entry 'w32': file "
            f"{str(folder / 'w32_fp32.tflite')!r} changed since the bundle was written: SHA-256 {recorded} recorded, "
            f"{file_sha256(folder / 'w4_fp32.tflite')} now") in proc.stderr
    assert (folder / "bundle.json").read_bytes() == before
    usage = benchmark(folder / "bundle.json", "--model=x.tflite")
    assert usage.returncode == 2 and "give either --bundle" in usage.stderr


# -------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_tiny_bundle_end_to_end_and_resumed(tmp_path, fashion_mnist_dir):
    """supernet -> two budgets searched, retrained, exported, timed (cnn_small, 256 images, ~1 min on 2 busy cores)."""
    workdir = tmp_path / "run"
    argv = [sys.executable, "-m", "cafe_tf.bundle", f"--config={os.path.join(REPO, 'configs', 'fashion_mnist_resnet20.py')}",
            f"--workdir={workdir}", "--config.model.name=cnn_small", f"--config.data.data_dir={fashion_mnist_dir}",
            "--config.data.max_train_examples=256", "--config.data.max_eval_examples=128",
            "--config.data.batch_size=64", "--config.data.cache=False", "--config.supernet.epochs=1",
            "--config.supernet.eval_fractions=()", "--config.supernet.eval_min=False", "--config.search.population=4",
            "--config.search.generations=1", "--config.search.parents=2", "--config.search.calibration_examples=64",
            "--config.search.eval_examples=64", "--config.train.epochs=1", "--config.bundle.budgets=0.8,0.4",
            "--config.bundle.benchmark_runs=6", "--config.bundle.benchmark_rounds=2", "--config.bundle.verify_examples=50",
            "--config.deploy.representative_examples=16"]
    proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = workdir / "bundle" / "bundle.json"
    b = bundle_lib.load_bundle(path)
    assert [e["id"] for e in b["entries"]] == ["macs40", "macs80"]
    for e in b["entries"]:
        widths = json.loads((workdir / "bundle" / "work" / e["id"] / "widths.json").read_text())
        assert e["macs"] == widths["macs"] <= e["max_macs"] == int(e["budget_ratio"] * b["full_macs"])
        assert e["accuracy"]["validation_score"] == widths["score"] and 0 <= e["accuracy"]["test"] <= 1
        assert e["accuracy"]["tflite_images"] == 50 and 0 <= e["accuracy"]["tflite"] <= 1
        assert e["latency"]["host"]["sha256"] == e["sha256"] == file_sha256(workdir / "bundle" / e["file"])
    # the second search started from the first one's scores
    assert "its search starts with" in (workdir / "bundle.log").read_text()
    # run again: every stage is skipped; a file changed by hand is exported again
    with open(workdir / "bundle" / "macs40_fp32.tflite", "ab") as f:
        f.write(b"x")
    proc = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = [line for line in proc.stdout.splitlines() if re.match(r"\[\d+/\d+\] \w+: -m ", line)]
    # (the benchmark runs again only if the re-export's bytes differ from the first export's)
    assert "export_macs40" in ran[0] and "verify_macs40" in ran[1], proc.stdout
    assert all(" benchmark: " in line for line in ran[2:]), proc.stdout
    assert bundle_lib.load_bundle(path)["entries"][0]["sha256"] == file_sha256(workdir / "bundle" / "macs40_fp32.tflite")
