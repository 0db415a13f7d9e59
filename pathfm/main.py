"""Command line: `python -m pathfm.main --config configs/<experiment>.py[:arg] --workdir DIR`.

Modes (`config.mode`): pretrain, prepare (configs/prepare.py: the slide index), evaluate
(configs/eval/), export (configs/export.py, which writes to `config.output` and needs no --workdir).

Flag parsing and dispatch only. Config values are overridden with `--config.key=value`; an
unknown key or an invalid value stops with one message and exit code 2 before anything is written.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from pathfm.config import base_config, validate
from pathfm.data.slides import find_slides
from pathfm.errors import ConfigError, PathfmError
from pathfm.parallel import distributed
from pathfm.runs.console import Console
from pathfm.runs.evaluate import evaluate, validate_eval
from pathfm.runs.evaluate_mil import evaluate_mil, validate_mil
from pathfm.runs.export import export_run, validate_export
from pathfm.runs.prepare import prepare, validate_prepare
from pathfm.runs.resume import check_same_run, record_changes
from pathfm.runs.workdir import RunWorkdir
from pathfm.train.checkpoint import complete_steps
from pathfm.train.loop import train
from pathfm.train.progress import already_complete, summary

USAGE = "usage: python -m pathfm.main --config configs/<experiment>.py[:arg] --workdir DIR"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
COMMON_OVERRIDES = (
    ("--config.data.slides=DIR", "your slides (a folder or a .csv manifest); synthetic if empty"),
    ("--config.batch_size=N", "global batch over all devices"),
    ("--config.epochs=N", "pseudo-epochs of steps_per_epoch steps; raise it to train on"),
    ("--workdir DIR", "checkpoints, metrics.jsonl, pathfm.log; rerun the same command to resume"),
)


def _define_flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "experiment config file", flag_values=fv, lock_config=True
    )
    flags.DEFINE_string(
        "workdir", None, "directory for checkpoints, logs and metrics", flag_values=fv
    )
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "multi-process runtime: auto = start it on TPU VMs and multi-task SLURM/Open MPI jobs",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0 (explicit multi-process launch)",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "verbose", False, "print library tracebacks too (they always go to the log file)",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer("num_processes", None, "number of processes", flag_values=fv)
    flags.DEFINE_integer(
        "process_id", None, "this process's index, 0..num_processes-1", flag_values=fv
    )
    return fv


def config_lines(folder: Path) -> list[str]:
    """`<path>  <first line of its docstring>` for each config file under `folder`."""
    entries = []
    for path in sorted(folder.rglob("*.py")):
        doc = (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
        entries.append((str(path.relative_to(folder.parent)), doc.splitlines()[0] if doc else ""))
    width = max((len(name) for name, _ in entries), default=0)
    return [f"  {name:<{width}}  {line}".rstrip() for name, line in entries]


def help_text(configs: Path = CONFIGS) -> str:
    """What `--help` prints: usage, the configs, the config keys, common overrides, docs."""
    keys = base_config()
    groups = [k for k, v in keys.items() if isinstance(v, ml_collections.ConfigDict)]
    run_keys = [k for k in keys if k not in groups]
    flag_values = _define_flags()
    flag_lines = [
        f"  --{name}: {flag_values[name].help}" for name in flag_values if name != "config"
    ]
    overrides = [f"  {flag:<26}{what}" for flag, what in COMMON_OVERRIDES]
    return "\n".join(
        [
            f"{USAGE} [--config.<key>=VALUE ...]",
            "",
            "Pre-trains (or prepares, evaluates, exports: the config's `mode`) and prints a",
            "progress line per logged step; a rerun on the same --workdir resumes.",
            "",
            "configs (--config <file>):",
            *(config_lines(configs) if configs.is_dir() else ["  (not found)"]),
            "",
            "config keys (override any with --config.<key>=VALUE):",
            *textwrap.wrap(
                f"run: {', '.join(run_keys)}", 96, initial_indent="  ", subsequent_indent="    "
            ),
            *textwrap.wrap(
                f"groups (--config.<group>.<key>): {', '.join(groups)}",
                96,
                initial_indent="  ",
                subsequent_indent="    ",
            ),
            "",
            "common overrides:",
            *overrides,
            "",
            "flags:",
            *flag_lines,
            "",
            "other tools:",
            "  python -m pathfm.preview --slides DIR --out DIR   slide QC gallery, no run needed",
            "  python -m pathfm.report --workdir DIR             a run's training report (PNG)",
            "",
            'more: README.md ("Configs and keys" lists every key with its default, "What a run',
            'writes" the outputs) and docs/*.md (data, scaling, evaluation, interop, dashboards).',
        ]
    )


def fail(message: str, code: int = 2) -> None:
    """Print one clear error and exit with `code` (2: bad input)."""
    print(f"pathfm: error: {message}", file=sys.stderr)
    sys.exit(code)


def _override(argv: list[str], key: str) -> str:
    """The `--config.<...>` argument that names `key` (its last component), or the key."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and name.split(".")[-1] == key:
            return arg
    return key


def flag_error_message(error: Exception, argv: list[str]) -> str:
    """One line for a command-line error from absl/ml_collections (whose messages hold reprs,
    tracebacks or a did-you-mean on a second line)."""
    chain, seen = [], error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    innermost = chain[-1]
    suggestion = next(
        (m.group(1) for e in chain if (m := re.search(r'Did you mean "([^"]+)"', str(e)))), None
    )
    if isinstance(innermost, KeyError):  # an unknown key in a --config.<key> override
        key = str(innermost.args[0]) if innermost.args else "?"
        arg = _override(argv, key)
        name = arg.split("=", 1)[0].removeprefix("--")
        hint = (
            f"; did you mean {name.rsplit('.', 1)[0]}.{suggestion}?"
            if suggestion
            else "; see pathfm/config.py for the keys"
        )
        return f"unknown config key {name} ({arg}){hint}"
    text = str(error)
    if "Error whilst parsing config file" in text:
        config_arg = text.split(":", 1)[0].removeprefix("flag ")
        return f"{config_arg}: {str(innermost).strip().splitlines()[-1]}"
    return " ".join(str(error).split())


def load_config(config_arg: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config that `--config=<config_arg>` and `--config.<override>` for each override
    give on the command line, parsed by the same flags (the benchmarks load configs with it).
    ConfigError with the command line's message on a bad file, argument, key or value."""
    argv = ["pathfm", f"--config={config_arg}", *(f"--config.{o}" for o in overrides)]
    saved, sys.argv = sys.argv, argv  # ml_collections finds --config.<key> overrides there
    try:
        fv = _define_flags()
        fv(argv)
        return fv.config
    except Exception as e:  # absl/ml_collections raise several types; all mean a bad flag
        raise ConfigError(flag_error_message(e, argv)) from None
    finally:
        sys.argv = saved


def parse_args(argv: list[str]):
    """(config, parsed flags) from the command line; exits 2 with a clear message on bad input."""
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(help_text())
        sys.exit(0)
    fv = _define_flags()
    config_path = next(
        (a.split("=", 1)[1] if "=" in a else None for a in argv if a.startswith("--config=")), None
    )
    if config_path is None and "--config" in argv[1:]:
        i = argv.index("--config")
        config_path = argv[i + 1] if i + 1 < len(argv) else None
    if config_path is None:
        fail(f"--config is required\n{USAGE}")
    config_file = config_path.split(":", 1)[0]
    if not os.path.isfile(config_file):
        fail(
            f"config file {config_file!r} does not exist; pass a file from configs/, e.g. "
            "--config configs/quickstart.py"
        )
    try:
        fv(argv)
        config = fv.config
    except Exception as e:  # absl/ml_collections raise several types; all mean a bad flag
        fail(f"{flag_error_message(e, argv)}\n{USAGE}")
    if not fv.workdir and config.get("mode") != "export":  # an export writes to config.output
        fail(f"--workdir is required\n{USAGE}")
    if fv.coordinator_address and (fv.num_processes is None or fv.process_id is None):
        fail("--coordinator_address needs --num_processes and --process_id as well")
    return config, fv


# Modes that write into --workdir, other than pre-training: (check the config, run).
WORKDIR_MODES = {
    "evaluate": (validate_eval, evaluate),
    "evaluate_mil": (validate_mil, evaluate_mil),
    "prepare": (validate_prepare, prepare),
}


def run_mode(config, workdir: str | None, run: RunWorkdir) -> None:
    """Validates `config` for its mode, then runs it; nothing is written before validation."""
    if config.mode == "export":
        validate_export(config)
        description = export_run(config)
        print(f"pathfm: wrote {description['timm_name']} to {config.output} (docs/interop.md)")
        return
    if config.mode in WORKDIR_MODES:
        check, start = WORKDIR_MODES[config.mode]
        check(config)
        run.own()
        start(config, workdir)
        return
    validate(config, num_devices=jax.device_count())
    if config.data.slides:
        find_slides(config.data.slides, config.data.root)  # a missing folder or file stops here
    changes = check_same_run(config, workdir)  # a refused rerun writes nothing
    total = config.epochs * config.steps_per_epoch
    is_main = jax.process_index() == 0
    saved = next(iter(complete_steps(Path(workdir) / "checkpoints")), 0)
    if saved >= total:
        if is_main:
            print(already_complete(workdir, saved, total))
        return
    run.own()
    if is_main:
        record_changes(workdir, changes)
    started = time.perf_counter()
    last = train(config, workdir)
    if is_main and not last.get("preempted"):
        print(summary(workdir, total, time.perf_counter() - started, last))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True") for a in argv)
    console = Console(verbose)
    config, fv = parse_args(argv)
    command = " ".join(argv)
    run = RunWorkdir(fv.workdir, console, command)
    distributed.initialize(fv.distributed, fv.coordinator_address, fv.num_processes, fv.process_id)
    try:
        run_mode(config, fv.workdir, run)
    except PathfmError as e:
        run.discard_unstarted()
        fail(*console.failure(e, command))
    except Exception as e:  # every failure ends with one line; its traceback goes to the log
        fail(*console.failure(e, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
