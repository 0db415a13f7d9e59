"""Position-embedding resampling equals the references' own torch code: DINO/DINOv2's
`interpolate_pos_encoding` (F.interpolate, bicubic, scale factor with the 0.1 offset, no
antialias) for "official", and timm's `resample_abs_pos_embed` for "timm", at the crop sizes of
every experiment config, in the function and inside the models of tiny DINO and DINOv2 runs."""

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from pathfm.main import load_config
from pathfm.models.pos_interp import interp_weights, resample_pos_embed
from pathfm.models.vit import VisionTransformer
from pathfm.ssl.registry import build_method

torch = pytest.importorskip("torch")
timm_pos_embed = pytest.importorskip("timm.layers.pos_embed")
F = torch.nn.functional

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# What float32 rounding leaves, relative to the table's largest entry: torch's own cubic
# coefficients are up to ~1e-6 off their exact values (cancellation in Keys' polynomial),
# pathfm's ~1e-7. On the tables models hold (trunc_normal 0.02) that is < 1e-7 absolute.
RELATIVE = 2e-6


def dino_interpolate_pos_encoding(pos_embed: np.ndarray, h0: int, w0: int) -> np.ndarray:
    """facebookresearch/dino `vision_transformer.py` `interpolate_pos_encoding` (DINOv2's with
    interpolate_offset=0.1 and interpolate_antialias=False is the same call), on [1, 1+N, D]."""
    pos_embed = torch.from_numpy(np.array(pos_embed))
    n = pos_embed.shape[1] - 1
    if n == h0 * w0 and h0 == w0:
        return pos_embed.numpy()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    h0, w0 = h0 + 0.1, w0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)),
        mode="bicubic",
    )
    assert int(h0) == patch_pos_embed.shape[-2] and int(w0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).numpy()


def timm_resample(pos_embed: np.ndarray, grid: int, prefix: int) -> np.ndarray:
    out = timm_pos_embed.resample_abs_pos_embed(
        torch.from_numpy(pos_embed), (grid, grid), num_prefix_tokens=prefix
    )
    return out.numpy()


def config_grids() -> list[tuple[str, int, int]]:
    """(config[:quick], stored grid, crop grid) for every crop size of every pre-training config."""
    cases = set()
    for path in sorted(CONFIGS.glob("*.py")):
        for arg in (None, "quick"):
            try:
                c = load_config(f"{path}:{arg}" if arg else str(path))
            except Exception:  # a config without a quick variant
                continue
            if "crops" not in c or c.get("mode", "pretrain") != "pretrain":
                continue
            p, stored = c.model.patch_size, c.model.img_size // c.model.patch_size
            for size in {c.crops.global_size, c.crops.local_size}:
                cases.add((f"{path.stem}:{arg or ''}", stored, size // p))
    return sorted(cases)


def assert_close(ours, reference) -> None:
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    err = np.abs(ours - reference).max() / np.abs(reference).max()
    assert err <= RELATIVE, err


def test_every_config_is_covered():
    names = {name for name, *_ in config_grids()}
    assert {"dino_vits16:", "kaiko_dinov2_vitl14_reg4:", "quickstart:"} <= names
    assert ("kaiko_dinov2_vitl14_reg4:", 16, 7) in config_grids()  # ViT-L/14, 98 px local crops


@pytest.mark.parametrize("name,stored,grid", config_grids())
def test_modes_equal_their_torch_references(name, stored, grid):
    rng = np.random.default_rng(stored * 100 + grid)
    pos = rng.standard_normal((1, 1 + stored * stored, 16)).astype(np.float32)
    official = resample_pos_embed(pos, (grid, grid), 1, "official")
    assert_close(official, dino_interpolate_pos_encoding(pos, grid, grid))
    for prefix in (0, 1):  # timm mode with and without a CLS row (no_embed_class)
        table = pos[:, 1 - prefix :]
        assert_close(
            resample_pos_embed(table, (grid, grid), prefix, "timm"),
            timm_resample(table, grid, prefix),
        )
    if grid != stored:  # the two are different methods: the test can tell them apart
        timm = resample_pos_embed(pos, (grid, grid), 1, "timm")
        assert np.abs(np.asarray(official) - np.asarray(timm)).max() > 1e-2


@pytest.mark.parametrize("new", [3, 6, 7, 13, 20, 28])
def test_non_square_grids_and_upsampling(new):
    rng = np.random.default_rng(new)
    pos = rng.standard_normal((1, 1 + 14 * 14, 8)).astype(np.float32)
    assert_close(
        resample_pos_embed(pos, (new, 9), 1, "official"), dino_interpolate_pos_encoding(pos, new, 9)
    )
    weights = interp_weights(14, new, "official")
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)  # constants stay constant


@pytest.mark.parametrize("method,extra", [("dino", {}), ("dinov2", {"num_registers": 2})])
def test_tiny_runs_use_the_reference_tables_at_every_crop_size(method, extra):
    """The backbone a DINO / DINOv2 run trains adds exactly torch's interpolated table."""
    config = load_config(str(CONFIGS / "quickstart.py"))
    config.method = method
    config.model.update(depth=1, **extra)  # one block: the table is added before the blocks
    config.crops.update(global_size=48, local_size=24)
    run = build_method(config)
    params, extra_state = jax.jit(run.init)(jax.random.key(0))
    backbone = run.backbone(params, extra_state, "student")
    assert backbone.config.pos_interp == "official"
    stored = np.asarray(backbone.params["pos_embed"])
    model = VisionTransformer(backbone.config)
    for size in (config.crops.global_size, config.crops.local_size):
        grid = size // backbone.config.patch_size
        images = np.zeros((1, size, size, 3), np.float32)
        _, state = model.apply({"params": backbone.params}, images, mutable=["intermediates"])
        (used,) = state["intermediates"]["pos_embed"]
        reference = dino_interpolate_pos_encoding(stored, grid, grid)
        assert_close(used, reference)
        assert np.abs(np.asarray(used) - reference).max() <= 1e-6
