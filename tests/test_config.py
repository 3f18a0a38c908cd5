"""Configs through real absl flag parsing; validation messages; the program frame's exit codes."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from cafe_tf import config as cfg
from cafe_tf import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MY_CONFIGS = ["configs/fashion_mnist_cnn.py", "configs/cifar10_resnet20_train.py"]


def parse(*argv, config_file="configs/fashion_mnist_cnn.py"):
    """Parses argv the way a program does: DEFINE_config_file on a fresh FlagValues."""
    argv = ["prog", f"--config={os.path.join(REPO, config_file)}", *argv]
    fv = flags.FlagValues()
    # config_flags declares the override flags from the argv it is given at definition time.
    holder = config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, sys_argv=argv)
    fv(argv)
    return holder.value


@pytest.mark.parametrize("path", MY_CONFIGS)
def test_configs_load_validate_and_are_locked(path):
    c = parse(config_file=path)
    cfg.validate(c)
    assert c.is_locked
    with pytest.raises(AttributeError, match="epocs"):
        c.train.epocs = 3
    json.dumps(cfg.to_dict(c))  # artifacts can record it


def test_cifar_recipe():
    c = parse(config_file="configs/cifar10_resnet20_train.py")
    assert (c.data.name, c.model.name, c.data.batch_size, c.train.epochs) == ("cifar10", "resnet20", 128, 200)
    assert (c.train.optimizer, c.train.lr, c.train.momentum, c.train.weight_decay, c.train.schedule) == (
        "sgd", 0.1, 0.9, 5e-4, "cosine")


def test_overrides_reach_the_config():
    c = parse("--config.train.epochs=2", "--config.train.warmup_epochs=1", "--config.model.input_shape=(32,32,1)",
              "--config.train.eval_splits=('test',)", "--config.data.name=cifar10")
    assert c.train.epochs == 2 and c.train.warmup_epochs == 1.0
    assert tuple(c.model.input_shape) == (32, 32, 1) and tuple(c.train.eval_splits) == ("test",)
    assert c.data.name == "cifar10"


def test_unknown_keys_and_wrong_types_are_refused_with_the_key():
    with pytest.raises(AttributeError, match="epocs"):
        parse("--config.train.epocs=2")
    with pytest.raises(KeyError, match="trian"):
        parse("--config.trian.epochs=2")
    with pytest.raises(flags.IllegalFlagValueError, match="config.train.epochs=abc"):
        parse("--config.train.epochs=abc")
    with pytest.raises(flags.IllegalFlagValueError, match="config.data.batch_size=2.5"):
        parse("--config.data.batch_size=2.5")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("train.optimizer", "rmsprop", "valid values: ['sgd', 'adam']"),
        ("train.schedule", "linear", "valid values: ['cosine', 'constant', 'step']"),
        ("train.mixed_precision", "float16", "mixed_float16"),
        ("train.epochs", 0, "must be >= 1"),
        ("train.eval_every", -1, ">= 0 (0 = the last epoch only)"),
        ("train.label_smoothing", 1.0, "in [0, 1)"),
        ("train.warmup_epochs", 9.0, "below train.epochs"),
        ("data.name", "mnist", "fashion_mnist"),
        ("data.augment", "mixup", "crop_flip"),
        ("data.batch_size", 0, ">= 1"),
        ("model.name", "resnet21", "resnet20"),
        ("model.input_shape", (32, 32), "(height, width, channels)"),
        ("distribute.strategy", "horovod", "multi_worker"),
    ],
)
def test_validation_names_key_value_and_valid_choices(key, value, fragment):
    c = cfg.base_config()
    section, field = key.split(".")
    c[section][field] = value
    with pytest.raises(cfg.ConfigError) as e:
        cfg.validate(c)
    assert f"config.{key}={value!r}" in str(e.value) and fragment in str(e.value)


def test_step_schedule_needs_boundaries_and_extra_sections_validate():
    c = cfg.base_config()
    c.train.schedule = "step"
    with pytest.raises(cfg.ConfigError, match="train.step_epochs"):
        cfg.validate(c)
    c.train.step_epochs = (2, 4)
    cfg.validate(c)

    c.search = ml_collections.ConfigDict({"max_macs": -1})

    def check_search(section):
        if section.max_macs < 0:
            raise cfg.ConfigError(f"config.search.max_macs={section.max_macs!r} is invalid")

    with pytest.raises(cfg.ConfigError, match="search.max_macs"):
        cfg.validate(c, extra_validators={"search": check_search})
    with pytest.raises(cfg.ConfigError, match="no 'dagger' section"):
        cfg.validate(c, sections=["dagger"], extra_validators={"dagger": check_search})


def test_tf_config_validation_names_the_problem():
    with pytest.raises(cfg.ConfigError, match="needs \\$TF_CONFIG"):
        distribute.validate_tf_config(None)
    with pytest.raises(cfg.ConfigError, match="not valid JSON"):
        distribute.validate_tf_config("{cluster")
    bad_index = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 2}}
    with pytest.raises(cfg.ConfigError, match=r"task.index=2 must be in \[0, 2\)"):
        distribute.validate_tf_config(json.dumps(bad_index))
    bad_address = {"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}
    with pytest.raises(cfg.ConfigError, match="host:port"):
        distribute.validate_tf_config(json.dumps(bad_address))
    good = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.validate_tf_config(json.dumps(good))["task"]["index"] == 1


def test_log_name_per_worker(monkeypatch):
    c = cfg.base_config().distribute
    workers = ["localhost:1", "localhost:2"]

    def name(task, cluster=None):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster or {"worker": workers}, "task": task}))
        return distribute.log_name("prune", c)

    assert distribute.log_name("prune", c) == "prune.log"  # default strategy: one process, one log
    c.strategy = "multi_worker"
    assert name({"type": "worker", "index": 0}) == "prune.log"  # worker 0 is the chief without a chief task
    assert name({"type": "worker", "index": 1}) == "prune.worker_1.log"
    with_chief = {"chief": ["localhost:3"], "worker": workers}
    assert name({"type": "chief", "index": 0}, with_chief) == "prune.log"
    assert name({"type": "worker", "index": 0}, with_chief) == "prune.worker_0.log"
    monkeypatch.setenv("TF_CONFIG", "{broken")  # left to the strategy's own check, which names it
    assert distribute.log_name("prune", c) == "prune.log"


def test_strategy_from_config():
    import tensorflow as tf

    c = cfg.base_config()
    assert distribute.strategy_from_config(c.distribute) is tf.distribute.get_strategy()
    c.distribute.strategy = "mirrored"
    c.distribute.devices = ("/cpu:7",)
    with pytest.raises(cfg.ConfigError, match=r"unknown devices \['/cpu:7'\]"):
        distribute.strategy_from_config(c.distribute)
    c.distribute.devices = ("/cpu:0",)
    strategy = distribute.strategy_from_config(c.distribute)
    assert strategy.num_replicas_in_sync == 1 and distribute.is_chief(strategy)


# ---------------------------------------------------------------------------- the program frame


def run_train(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "cafe_tf.cli.train", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )


def test_program_help_and_usage_errors(tmp_path):
    result = run_train("--help")
    assert result.returncode == 0
    assert "--config" in result.stdout and "--workdir" in result.stdout and "resumes" in result.stdout

    fm = "configs/fashion_mnist_cnn.py"
    cases = [
        (["--config", fm, "--workdir", str(tmp_path), "--config.train.epocs=2"], "config.train.epocs"),
        (["--config", fm, "--workdir", str(tmp_path), "--config.train.epochs=two"], "config.train.epochs=two"),
        (["--config", fm, "--workdir", str(tmp_path), "--config.train.optimizer=rmsprop"], "'sgd', 'adam'"),
        (["--config", fm], "--workdir is required"),
        (["--workdir", str(tmp_path)], "--config is required"),
        (["--config", "configs/missing.py", "--workdir", str(tmp_path)], "configs/missing.py"),
        (["--config", fm, "--workdir", str(tmp_path), "--bogus=1"], "bogus"),
    ]
    for argv, fragment in cases:
        result = run_train(*argv)
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert fragment in result.stderr, (argv, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, argv


def test_program_runtime_error_is_one_clean_line(tmp_path):
    result = run_train("--config", "configs/fashion_mnist_cnn.py", "--workdir", str(tmp_path / "w"),
                       "--config.data.name=cifar10", f"--config.data.data_dir={tmp_path / 'empty'}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "'cifar10'" in error[0] and "not prepared" in error[0]
    assert "Traceback" in (tmp_path / "w" / "train.log").read_text()  # the details are kept in the log
