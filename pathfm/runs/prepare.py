"""`python -m pathfm.main --config configs/prepare.py --config.data.slides=... --workdir DIR`:
prepare the slide index once, sharded over the processes of JAX's multi-process runtime (the same
launch as training) and over local cores, so training hosts only map it (docs/data.md)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax
import ml_collections

from pathfm.data import pipeline
from pathfm.data.checks import check_data_config
from pathfm.errors import ConfigError
from pathfm.parallel import distributed

log = logging.getLogger(__name__)


def validate_prepare(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first bad key, before any work."""
    if not config.data.slides:
        raise ConfigError(
            "config.data.slides: name the slides to index (a directory, a glob pattern or a CSV "
            "manifest), e.g. --config.data.slides=/data/tcga/manifest.csv"
        )
    check_data_config(config)


def prepare(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Build (or find) the index; writes <workdir>/prepare.json with its directory and counts."""
    index = pipeline.build_slide_index(
        config,
        config.data.slides,
        workdir,
        jax.process_index(),
        jax.process_count(),
        distributed.barrier,
        stop_on_bad=False,  # a preparation job records bad slides; training decides
    )
    summary = {
        "index": index.directory,
        "slides": len(index),
        "rejected": len(index.rejected),
        "runs": len(index.run_begin),
        "bytes": sum(f.stat().st_size for f in Path(index.directory).iterdir()),
    }
    if jax.process_index() == 0:
        Path(workdir, "prepare.json").write_text(json.dumps(summary, indent=2))
        print(
            f"pathfm: slide index of {summary['slides']} usable slides "
            f"({summary['rejected']} rejected) in {index.directory}; train with "
            f"--config.data.index_dir={os.path.dirname(index.directory)}"
        )
    return summary
