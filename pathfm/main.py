"""Command line: `python -m pathfm.main --config configs/<experiment>.py[:arg] --workdir DIR`.

Modes (`config.mode`): pretrain, prepare (configs/prepare.py: the slide index), evaluate
(configs/eval/), export (configs/export.py, which writes to `config.output` and needs no --workdir).

Flag parsing and dispatch only. Config values are overridden with `--config.key=value`; an
unknown key or an invalid value stops with one message and exit code 2 before anything is written.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from pathfm.errors import PathfmError

USAGE = "usage: python -m pathfm.main --config configs/<experiment>.py[:arg] --workdir DIR"


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
    flags.DEFINE_integer("num_processes", None, "number of processes", flag_values=fv)
    flags.DEFINE_integer(
        "process_id", None, "this process's index, 0..num_processes-1", flag_values=fv
    )
    return fv


def fail(message: str, code: int = 2) -> None:
    """Print one clear error and exit with `code` (2: bad input)."""
    print(f"pathfm: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv: list[str]):
    """(config, parsed flags) from the command line; exits 2 with a clear message on bad input."""
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
        message = str(e).replace("\n", " ").strip()
        fail(f"bad command line: {message}\n{USAGE}")
    if not fv.workdir and config.get("mode") != "export":  # an export writes to config.output
        fail(f"--workdir is required\n{USAGE}")
    if fv.coordinator_address and (fv.num_processes is None or fv.process_id is None):
        fail("--coordinator_address needs --num_processes and --process_id as well")
    return config, fv


def _own(workdir: str, argv: list[str]) -> None:
    """Create the workdir and take its lock (process 0 of a multi-process run holds it for all)."""
    import jax

    from pathfm.runs.workdir import lock_workdir

    if jax.process_index() == 0:
        lock_workdir(workdir, " ".join(argv))
    else:
        os.makedirs(workdir, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    config, fv = parse_args(argv)
    workdir = fv.workdir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import jax

    from pathfm import distributed
    from pathfm.config import validate

    distributed.initialize(fv.distributed, fv.coordinator_address, fv.num_processes, fv.process_id)
    try:
        if config.mode == "export":
            from pathfm.interop.export_run import export_run, validate_export

            validate_export(config)
            description = export_run(config)
            print(f"pathfm: wrote {description['timm_name']} to {config.output} (docs/interop.md)")
            return 0
        if config.mode == "evaluate":
            from pathfm.evaluation.run import evaluate, validate_eval

            validate_eval(config)
            _own(workdir, argv)
            evaluate(config, workdir)
            return 0
        if config.mode == "evaluate_mil":
            from pathfm.evaluation.mil_run import evaluate_mil, validate_mil

            validate_mil(config)
            _own(workdir, argv)
            evaluate_mil(config, workdir)
            return 0
        if config.mode == "prepare":
            from pathfm.runs.prepare import prepare, validate_prepare

            validate_prepare(config)
            _own(workdir, argv)
            prepare(config, workdir)
            return 0
        validate(config, num_devices=jax.device_count())
        if config.data.slides:
            from pathfm.data.slides import find_slides

            # a missing folder or file stops before any write
            find_slides(config.data.slides, config.data.root)
        if config.mode == "pretrain":
            from pathfm.train.loop import train

            _own(workdir, argv)
            train(config, workdir)
    except PathfmError as e:
        fail(str(e), e.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
