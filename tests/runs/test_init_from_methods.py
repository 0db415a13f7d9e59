"""`model.init_from` for every method and every architecture pathfm exports, through the command
line: DINO, DINOv2 with registers, SwiGLU and LayerScale (a file without DINOv2's iBOT
mask_token), and MAE each start from timm weights and train a few real steps in
`python -m pathfm.main`; the runs export (in-process, as the export command does) and the
exports load in timm strictly. The state they start from holds the file's weights, and no two of
its leaves share a buffer (the train step donates the state: a shared buffer would be donated
twice)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from interop.timm_util import make_run, timm_model
from testutil import REPO, xla_flags

from pathfm import parallel
from pathfm.interop.timm_export import export_backbone
from pathfm.main import load_config
from pathfm.runs.export import export_run, validate_export
from pathfm.train.build import build_setup
from pathfm.train.metrics_log import read_metrics

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

# (experiment config:quick, --config overrides giving the architecture)
CASES = {
    "dino": ("configs/dino_vits16.py:quick", []),
    "dinov2_reg4_swiglu_layerscale": (  # one run for the three DINOv2 architecture options
        "configs/kaiko_dinov2_vitl14_reg4.py:quick",
        ["model.ffn=swiglu", "model.layer_scale_init=1e-5"],
    ),
    "mae": ("configs/campanella_mae_vitl16.py:quick", []),
}
SHORT = ["epochs=1", "steps_per_epoch=2", "monitor.every_steps=0", "dashboard.tensorboard=False"]


def _config(name, slides, *more):
    path, overrides = CASES[name]
    return load_config(str(REPO / path), [*overrides, f"data.slides={slides}", *SHORT, *more])


def _weights(name, folder, slides):
    """timm weights of the case's architecture (random values), as a user would download them."""
    run = make_run(_config(name, slides), seed=7)
    backbone = run.method.backbone(run.params, run.extra, run.method.backbones[0])
    description = export_backbone(backbone, folder, {"mean": [0.5] * 3, "std": [0.5] * 3})
    return folder / description["files"]["safetensors"], backbone


def _buffers(tree):
    return [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)]


def _check_fresh_state(config, source):
    """The state a run starts from: the file's weights in every backbone, no buffer shared."""
    setup = build_setup(config, parallel.single_device_mesh())
    state, method = setup.fresh_state(), setup.method
    buffers = _buffers(state)
    assert len(set(buffers)) == len(buffers)  # nothing shared, whatever the file lacks
    for which in method.backbones:
        started = method.backbone(state["params"], state["extra"], which).params
        for key in ("patch_embed", "blocks_0", "norm"):
            jax.tree.map(np.testing.assert_array_equal, started[key], source.params[key])


@pytest.mark.parametrize("name", sorted(CASES))
def test_init_from_trains_and_exports_through_the_cli(name, tmp_path, synthetic_slide_dir):
    weights, source = _weights(name, tmp_path / "weights", synthetic_slide_dir)
    config = _config(name, synthetic_slide_dir, f"model.init_from={weights}")
    if name != "dino":  # DINO's: tests/runs/test_export.py test_training_starts_from_...
        _check_fresh_state(config, source)

    workdir, export = tmp_path / "run", tmp_path / "export"
    path, overrides = CASES[name]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = xla_flags()
    flags = [f"--config.{o}" for o in [*overrides, f"data.slides={synthetic_slide_dir}", *SHORT]]
    train = [sys.executable, "-m", "pathfm.main", "--config", path, "--workdir", str(workdir)]
    out = subprocess.run(
        [*train, *flags, f"--config.model.init_from={weights}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [row["loss"] for row in read_metrics(workdir / "metrics.jsonl") if "loss" in row]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    export_config = load_config(
        str(REPO / "configs" / "export.py"), [f"checkpoint={workdir}", f"output={export}"]
    )
    validate_export(export_config)
    export_run(export_config)  # what the export command line runs (tests/runs/test_export.py)
    (description,) = [json.loads(p.read_text()) for p in export.glob("vit_*.json")]
    timm_model(description, export, "pth")  # timm loads the file strictly
    state_dict = torch.load(export / description["files"]["pth"], weights_only=True)
    # trained: the exported backbone moved away from the file it started from
    start = torch.load(weights.with_suffix(".pth"), weights_only=True)
    assert not torch.equal(
        start["blocks.0.attn.qkv.weight"], state_dict["blocks.0.attn.qkv.weight"]
    )
