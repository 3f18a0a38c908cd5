"""The one frame of every cafe-tf and deploy program: flags, logging, errors, exit codes and ``--help``.

Two kinds of program use it. A *job* (``train``, ``search``, ``pipeline``, ...) takes
``--config`` and ``--workdir`` and calls :func:`run_program`::

    \"\"\"One paragraph that --help prints.\"\"\"
    from cafe_tf import programs

    programs.define_config_flags()

    def main(config, workdir):
        ...  # call the library

    if __name__ == "__main__":
        programs.run_program(main)

A *tool* (``deploy.export``, ``deploy.benchmark``, ...) takes plain flags and calls
:func:`run_tool` with a ``main()`` that reads ``absl.flags.FLAGS``. Program modules hold only the
command line; a library module whose ``python -m`` name users know forwards to its program with
:func:`forward_to` (``deploy/export.py`` -> ``deploy/export_main.py``).

Both log through absl to stderr (a job also to ``<workdir>/<program>.log``; a non-chief worker of a
multi-worker run to ``<program>.<worker>.log``). A tool logs warnings only unless ``--verbosity`` is
given, since tfds and the TFLite converter log a page per call at INFO; a job's INFO lines are its
progress. Exit codes:

* 0: done (``--help`` too);
* 1: the job failed. Our errors (``ValueError`` subclasses: ``DatasetError``, ``ArtifactError``,
  ``DeployError``, ``StageError``) print one line ``<program>: error: <message>``, with the
  traceback in the job's log file; an unexpected exception prints its traceback;
* 2: usage or config error (unknown flag or config key, wrong type, invalid value, missing flag or
  file): ``<program>: usage error: <message naming the flag or key>``;
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import runpy
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cafe_tf.config import VALIDATORS, ConfigError, validate
from cafe_tf.errors import UsageError

__all__ = [
    "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError", "config_argv", "define_config_flags",
    "forward_to", "parse_flags", "program_name", "require_file", "run_program", "run_tool",
]

Validators = Mapping[str, Callable[[ml_collections.ConfigDict], None]]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")

# Flags this module defines belong to the program that asks for them, so they show in its --help.
flags.disclaim_key_flags()


def define_config_flags(
    default_config: str | None = None, workdir_help: str = "folder for this job's outputs (created if missing)"
) -> tuple[flags.FlagHolder, flags.FlagHolder]:
    """Defines ``--config`` (a configs/*.py file, overridable as ``--config.train.epochs=2``) and ``--workdir``."""
    config = config_flags.DEFINE_config_file(
        "config",
        default_config,
        "experiment config: a Python file whose get_config() returns an ml_collections.ConfigDict "
        "(see configs/). Override any field with --config.<section>.<key>=<value>, e.g. --config.train.epochs=2.",
        lock_config=True,
    )
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    return config, workdir


def config_argv() -> list[str]:
    """This process's ``--config`` file and every ``--config.*`` override, to hand to a stage's program."""
    out = [f"--config={config_flags.get_config_filename(flags.FLAGS['config'])}"]
    out += [a for a in sys.argv[1:] if a.startswith("--config.")]
    return out


def program_name() -> str:
    """The running program's short name (``train`` for ``cafe-tf train``, ``export`` for ``deploy.export``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else os.path.splitext(os.path.basename(sys.argv[0] or "program"))[0]
    parts = [p for p in name.split(".") if p not in ("cafe_tf", "__main__")]
    short = parts[-1] if parts else "program"
    # deploy/export_main.py is `python -m deploy.export` to the user.
    return short[: -len("_main")] if short.endswith("_main") and len(short) > len("_main") else short


def require_file(path: str | None, flag: str) -> str:
    """Returns ``path`` if it names an existing file, else raises :class:`UsageError` naming ``--flag``."""
    if not path:
        raise UsageError(f"--{flag} is required")
    if not os.path.isfile(path):
        raise UsageError(f"--{flag}={path!r} does not exist or is not a file")
    return path


def forward_to(program: str) -> None:
    """Runs module ``program`` as ``__main__``: ``python -m deploy.export`` forwards to ``deploy.export_main``.

    ``alter_sys`` makes the program module ``__main__`` and ``sys.argv[0]`` while it runs, so
    ``--help`` prints its docstring and flags, as if it had been started by name.
    """
    runpy.run_module(program, run_name="__main__", alter_sys=True)


def _usage_exit(message: str) -> NoReturn:
    sys.stderr.write(f"{program_name()}: usage error: {message}\nPass --help to see the flags.\n")
    sys.exit(EXIT_USAGE)


def _config_key_in_argv(argv: Iterable[str], error: BaseException) -> str:
    # ConfigDict's "no such key" errors name only the last component (inside layers of quoting);
    # find the override it came from so the message names the whole key.
    text = str(error)
    found = re.search(r"'([A-Za-z0-9_]+)\\*'", text)
    missing = found.group(1) if found else text
    suggestion = re.search(r'Did you mean "([A-Za-z0-9_]+)"', text)
    hint = f'; did you mean "{suggestion.group(1)}"?' if suggestion else ""
    for arg in argv:
        key = arg.lstrip("-").split("=", 1)[0]
        if key.startswith("config.") and missing in key.split("."):
            return f"unknown config key {key!r} (no field {missing!r}){hint}"
    return f"unknown config key {missing!r}{hint}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flags parser that turns every flag or config-override problem into exit code 2."""
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:
        # absl's --help / --helpfull print the usage and exit 1; asking for help is not a failure.
        if e.code == 1 and any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
            sys.exit(EXIT_OK)
        raise
    except flags.Error as e:
        _usage_exit(str(e))
    except (AttributeError, KeyError) as e:
        _usage_exit(_config_key_in_argv(argv, e))
    except Exception as e:  # the config file itself failed to load (an import or syntax error in it)
        _usage_exit(f"could not load the config: {type(e).__name__}: {e}")


def _loaded_config() -> ml_collections.ConfigDict | None:
    if "config" not in flags.FLAGS:
        return None
    config = flags.FLAGS["config"].value
    if config is None or isinstance(config, ml_collections.ConfigDict):
        return config
    try:  # config_flags defers a failed load to the first access of the value
        config.keys()
    except Exception as e:  # any load failure is the config file's fault: a usage error
        _usage_exit(f"could not load --config={flags.FLAGS['config'].config_filename!r}: {e}")
    if not isinstance(config, ml_collections.ConfigDict):
        _usage_exit(f"--config must define get_config() returning an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


def _log_to_workdir(workdir: str, config: ml_collections.ConfigDict) -> str:
    from cafe_tf import distribute

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, distribute.log_name(program_name(), config.get("distribute")))
    handler = std_logging.FileHandler(path)
    handler.setFormatter(logging.PythonFormatter())
    std_logging.getLogger().addHandler(handler)
    return path


def _log_only(path: str, text: str) -> None:
    # The traceback of an expected error belongs in the log file, not on the user's terminal.
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _guarded(call: Callable[[], Any], log_path: str | None = None) -> int:
    """Runs ``call()`` and maps what it raises to an exit code and one line on stderr."""
    name = program_name()
    try:
        call()
    except (ConfigError, UsageError) as e:
        logging.debug("usage error", exc_info=True)
        _usage_exit(str(e))
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted\n")
        return EXIT_INTERRUPTED
    except ValueError as e:  # ours: DatasetError, ArtifactError, DeployError, ... (clear messages by contract)
        where = ""
        if log_path:
            _log_only(log_path, traceback.format_exc())
            where = f"\n(traceback in {log_path})"
        sys.stderr.write(f"{name}: error: {e}{where}\n")
        return EXIT_FAILURE
    except Exception:  # unexpected: a bug, so show everything
        logging.exception("%s failed", name)
        return EXIT_FAILURE
    return EXIT_OK


def _no_positional(argv: list[str]) -> None:
    if len(argv) > 1:
        _usage_exit(f"unexpected positional arguments {argv[1:]}; flags look like --name=value")


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ runtime reads this when it first logs (the library imports TensorFlow lazily);
    # TF 2.21's few start-up lines print before that and ignore it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_program(
    main: Callable[[ml_collections.ConfigDict, str], Any],
    *,
    sections: Iterable[str] | None = None,
    extra_validators: Validators | None = None,
    required: Iterable[str] = (),
) -> NoReturn:
    """Runs the job ``main(config, workdir)`` (flags from :func:`define_config_flags`); never returns.

    The config is validated before ``main`` runs: ``sections`` (default: every section present that
    has a validator, and the ``required`` ones, which must be present) with ``extra_validators`` as
    :func:`cafe_tf.config.validate` does.
    """

    def _main(argv: list[str]) -> int:
        _no_positional(argv)
        config = _loaded_config()
        workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
        if config is None:
            _usage_exit("--config is required, e.g. --config configs/fashion_mnist_cnn.py")
        if not workdir:
            _usage_exit("--workdir is required: the folder for checkpoints, logs and results")
        checked = sections
        if checked is None and required:
            known = [*VALIDATORS, *(extra_validators or {})]
            checked = [s for s in dict.fromkeys([*known, *required]) if s in config or s in required]
        try:
            validate(config, checked, extra_validators)
        except ConfigError as e:
            _usage_exit(str(e))
        workdir = os.path.abspath(os.path.expanduser(workdir))
        log_path = _log_to_workdir(workdir, config)
        logging.info("%s: workdir %s, log %s", program_name(), workdir, log_path)
        return _guarded(lambda: main(config, workdir), log_path)

    _quiet_tensorflow()
    app.run(_main, flags_parser=parse_flags)
    raise AssertionError("app.run returned")  # pragma: no cover - app.run always exits


def run_tool(main: Callable[[], Any]) -> NoReturn:
    """Runs the tool ``main()`` (which reads ``absl.flags.FLAGS``); never returns."""

    def _main(argv: list[str]) -> int:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # tfds and the converter log a page per call at INFO
        _no_positional(argv)
        return _guarded(main)

    _quiet_tensorflow()
    app.run(_main, flags_parser=parse_flags)
    raise AssertionError("app.run returned")  # pragma: no cover - app.run always exits
