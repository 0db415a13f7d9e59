"""End to end: a tiny run trained from imported weights (`config.model.init_from`), exported by
`python -m pathfm.main --config configs/export.py`, loaded in timm as docs/interop.md says and
through the folder's hubconf.py, with a model card beside the weights; bad export keys and bad
weights stop with one clear message."""

import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from testutil import REPO, tiny_dino_config, xla_flags

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

from interop.timm_util import make_run, timm_tokens  # noqa: E402

from pathfm import parallel  # noqa: E402
from pathfm.config import validate  # noqa: E402
from pathfm.errors import ConfigError  # noqa: E402
from pathfm.interop.timm_export import export_backbone  # noqa: E402
from pathfm.main import main  # noqa: E402
from pathfm.ssl.registry import build_method  # noqa: E402
from pathfm.train.build import build_setup  # noqa: E402
from pathfm.train.checkpoint import load_state  # noqa: E402
from pathfm.train.loop import train  # noqa: E402

EXPORT_CONFIG = str(REPO / "configs" / "export.py")


def _tiny(**overrides):
    config = tiny_dino_config(epochs=1, steps_per_epoch=2)
    config.monitor.every_steps = 0
    config.model.drop_path_rate = 0.0
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """timm weights of the tiny DINO architecture (random), as a user would download them."""
    folder = tmp_path_factory.mktemp("weights")
    run = make_run(_tiny())
    backbone = run.method.backbone(run.params, run.extra, "teacher")
    description = export_backbone(backbone, folder, {"mean": [0.5] * 3, "std": [0.5] * 3})
    return folder / description["files"]["safetensors"], backbone.params


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_slide_dir, weights):
    """Two DINO steps started from the imported weights, then the export command line."""
    workdir = tmp_path_factory.mktemp("run")
    config = _tiny()
    config.data.slides = str(synthetic_slide_dir)
    config.model.init_from = str(weights[0])
    validate(config)
    train(config, workdir)
    output = workdir.parent / "export"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = xla_flags()
    keys = [f"--config.checkpoint={workdir}", f"--config.output={output}"]
    out = subprocess.run(
        [sys.executable, "-m", "pathfm.main", "--config", "configs/export.py", *keys],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, output, out.stdout


def test_cli_export_loads_in_timm_with_the_runs_features(run, slide_patches):
    workdir, output, stdout = run
    name = "vit_tiny_patch16_224"  # the tiny 32-wide test ViT (patch 8) closest named size
    assert f"wrote {name}" in stdout
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [f"{name}.safetensors", f"{name}.pth", f"{name}.json", "hubconf.py", "README.md", "eva"]
    )
    description = json.loads((output / f"{name}.json").read_text())
    assert description["timm_kwargs"]["patch_size"] == 8
    assert description["timm_kwargs"]["img_size"] == description["image_size"] == 32
    assert description["mean"] == [0.485, 0.456, 0.406] and description["mpps"] == [0.5]
    assert (description["method"], description["backbone"], description["step"]) == (
        "dino",
        "teacher",
        2,
    )
    path = output / f"{name}.safetensors"
    model = timm.create_model(  # as docs/interop.md says
        name,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=0),
        num_classes=0,
        **description["timm_kwargs"],
    ).eval()
    config = json.loads((workdir / "config.json").read_text())
    method = build_method(_tiny())
    _, state = load_state(workdir / "checkpoints")
    images = slide_patches[:, :32, :32]
    cls, patches = jax.jit(method.tokens, static_argnums=3)(
        state["params"], state["extra"], images, "teacher"
    )
    theirs = timm_tokens(model, images, config["data"]["mean"], config["data"]["std"])
    assert np.max(np.abs(theirs[0] - cls)) <= 1e-4
    assert np.max(np.abs(theirs[1] - patches)) <= 1e-4
    x = torch.from_numpy(timm_input(images, description)).permute(0, 3, 1, 2)
    hub = torch.hub.load(str(output), "pathfm_vit", source="local", trust_repo=True).eval()
    with torch.no_grad():
        np.testing.assert_allclose(hub(x).numpy(), theirs[0], atol=1e-5)  # num_classes=0: CLS
    # The export mode also writes eva's task configs; tests/test_eva.py runs eva on them.
    configs = sorted(p.name for p in (output / "eva").iterdir())
    assert configs == ["bach.yaml", "crc.yaml", "mhist.yaml", "patch_camelyon.yaml"]
    assert str(path.resolve()) in (output / "eva" / "crc.yaml").read_text()
    card = (output / "README.md").read_text()
    for kwarg, value in description["timm_kwargs"].items():
        assert f"    {kwarg}={value!r},\n" in card  # the timm.create_model call
    assert f"# {name}: pathfm dino teacher, step 2\n" in card
    assert "closest registered family" in card and "`patch_size=8` (name: 16)" in card
    assert f"mean `{description['mean']}`, std `{description['std']}`" in card
    assert f"2 steps x batch {config['batch_size']}" in card
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"| `{path.name}` | `{digest}` |" in card


def timm_input(images, description):
    mean, std = (np.asarray(description[k], np.float32) for k in ("mean", "std"))
    return (images.astype(np.float32) / 255.0 - mean) / std


def test_training_starts_from_the_imported_weights(weights):
    """Student and teacher backbones hold the file's values; heads stay randomly initialised."""
    path, params = weights
    config = _tiny()
    mesh = parallel.single_device_mesh()
    plain = jax.device_get(build_setup(config, mesh).fresh_state())
    config.model.init_from = str(path)
    state = jax.device_get(build_setup(config, mesh).fresh_state())
    for backbone in (state["params"]["backbone"], state["extra"]["teacher"]["backbone"]):
        jax.tree.map(np.testing.assert_array_equal, backbone, params)
    jax.tree.map(np.testing.assert_array_equal, state["params"]["head"], plain["params"]["head"])
    jax.tree.map(np.testing.assert_array_equal, state["opt_state"], plain["opt_state"])


def test_bad_init_from_is_one_clear_config_error(weights, tmp_path):
    path, _ = weights
    for model, message in (
        (dict(init_from=str(tmp_path / "none.pth")), "does not exist"),
        (dict(init_from=str(path.with_suffix(".json"))), "use one of"),
        (dict(init_from=str(path), depth=3), "'blocks.2.norm1.weight' is missing"),
        (dict(init_from=str(path), init_prefix="teacher."), "no key starting with"),
    ):
        config = _tiny()
        config.model.update(model)
        with pytest.raises(ConfigError, match=r"config\.model\.init_from|init_prefix") as error:
            validate(config)
        assert message in str(error.value)


@pytest.mark.parametrize(
    "args,key",
    [
        ([], "config.checkpoint"),
        (["--config.checkpoint={run}"], "config.output"),
        (["--config.checkpoint={run}", "--config.output={out}", "--config.step=7"], "step"),
        (
            ["--config.checkpoint={run}", "--config.output={out}", "--config.backbone=ema"],
            "config.backbone",
        ),
        (
            [
                "--config.checkpoint={run}",
                "--config.output={out}",
                "--config.formats=('onnx',)",
            ],
            "config.formats",
        ),
    ],
)
def test_bad_export_keys_stop_before_writing(args, key, run, tmp_path, capsys, monkeypatch):
    workdir, _, _ = run
    out = tmp_path / "out"
    argv = ["pathfm", "--config", EXPORT_CONFIG, *(a.format(run=workdir, out=out) for a in args)]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads config overrides from it
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not out.exists()


def test_missing_torch_is_named_with_the_extra(monkeypatch):
    import importlib.util

    from pathfm.interop import timm_export

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[export\]"'):
        timm_export.check_formats(("safetensors", "pth"))
    timm_export.check_formats(("safetensors",))  # needs no torch


def test_the_jax_side_never_imports_torch(weights, tmp_path):
    """Export to safetensors and import from it in a fresh interpreter: torch stays unloaded."""
    path, _ = weights
    code = f"""
import sys
from pathfm.interop import timm_export, timm_import, timm_names, key_map
from pathfm.runs import export
from pathfm.config import validate
import testutil
config = testutil.tiny_dino_config()
config.model.update(drop_path_rate=0.0, init_from={str(path)!r})
validate(config)
from pathfm.ssl.registry import build_method
import jax
method = build_method(config)
params, extra = jax.eval_shape(method.init, jax.random.key(0))
b = method.backbone(params, extra, "student")
weights = timm_import.load_backbone({str(path)!r}, "", b.config, b.params)
timm_export.export_backbone(
    type(b)(weights, b.config), {str(tmp_path)!r}, dict(mean=[0.5] * 3, std=[0.5] * 3),
    ("safetensors",),
)
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO / "tests")}
    env["XLA_FLAGS"] = xla_flags()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
