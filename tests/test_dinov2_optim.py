"""DINOv2's optimiser rules against PyTorch, next to DINO v1's.

- Clipping: DINOv2 clips each student module by its total norm (facebookresearch/dinov2
  `dinov2/train/train.py` `do_train`: `clip_grad_norm_` on each of `model.student.values()`),
  DINO v1 each tensor (facebookresearch/dino `utils.clip_gradients`).
- Freezing the heads' last layers: DINOv2 sets their lr to 0 (`build_schedulers`,
  `apply_optim_scheduler`), so AdamW's moments and step count advance; DINO v1 drops their
  gradients (`utils.cancel_gradients_last_layer`), so AdamW skips them.
- Layout: kaiko's DINOv2 ViT-L/14 trains `cls_token` and a CLS position row as DINOv2 does and
  exports to timm's `vit_*_reg4_dinov2` (no_embed_class) with the same features.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from testutil import REPO

from pathfm.adamw import (
    adamw,
    clip_by_group_norm,
    clip_by_tensor_norm,
    module_labels,
    regex_predicate,
)
from pathfm.pytree import path_string
from pathfm.ssl.registry import build_method

torch = pytest.importorskip("torch")

MAX_NORM = 1.0
LAST_LAYER = r"^(dino_head|ibot_head)/last_layer/"


def _named(tree) -> dict[str, np.ndarray]:
    """{'backbone/blocks_0/...': array} of a pytree, in leaf order."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_string(p): np.asarray(x) for p, x in flat}


def _torch_student(named: dict[str, np.ndarray]):
    """A `torch.nn.ModuleDict` of modules named by the first path component, holding one
    Parameter per leaf (double underscores for slashes), as DINOv2's `model.student`."""
    modules: dict[str, torch.nn.ParameterDict] = {}
    for path, value in named.items():
        module, rest = path.split("/", 1)
        params = modules.setdefault(module, torch.nn.ParameterDict())
        params[rest.replace("/", "__")] = torch.nn.Parameter(torch.tensor(value))
    return torch.nn.ModuleDict(modules)


def _torch_params(student) -> dict[str, "torch.nn.Parameter"]:
    return {f"{m}/{k.replace('__', '/')}": p for m, sub in student.items() for k, p in sub.items()}


def _random_like(tree, seed: int, scale: float = 1.0):
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return treedef.unflatten(
        [jnp.asarray(scale * rng.normal(size=x.shape), jnp.float32) for x in leaves]
    )


# --- (a) per-module clipping is torch's clip_grad_norm_ on each module ---


def _quick_dinov2_params():
    """Parameter shapes of the quick DINOv2 config with a separate iBOT head."""
    config = _load_config("kaiko_dinov2_vitl14_reg4", "quick")
    return jax.eval_shape(build_method(config).init, jax.random.key(0))[0]


def test_per_module_clipping_is_torch_clip_grad_norm_per_student_module():
    shapes = _quick_dinov2_params()
    assert set(jax.tree.leaves(module_labels(shapes))) == {"backbone", "dino_head", "ibot_head"}
    # Every tensor's norm stays below MAX_NORM (per-tensor clipping leaves it alone), every
    # module's total norm is above it.
    grads = _random_like(shapes, 0)
    grads = jax.tree.map(lambda g: 0.9 * MAX_NORM * g / jnp.linalg.norm(g), grads)
    student = _torch_student(_named(grads))  # values do not matter, only the grads
    for k, p in _torch_params(student).items():
        p.grad = torch.tensor(_named(grads)[k])
    for module in student.values():
        torch.nn.utils.clip_grad_norm_(module.parameters(), MAX_NORM)
    expected = {k: p.grad.numpy() for k, p in _torch_params(student).items()}

    ours = _named(clip_by_group_norm(MAX_NORM, module_labels(grads)).update(grads, None)[0])
    diff = max(np.max(np.abs(ours[k] - expected[k])) for k in expected)
    print(f"per-module clipping vs torch clip_grad_norm_: max |diff| {diff:.1e}")
    assert diff < 1e-7
    per_tensor = _named(clip_by_tensor_norm(MAX_NORM).update(grads, None)[0])
    assert all(np.array_equal(per_tensor[k], v) for k, v in _named(grads).items())
    for module in ("backbone", "dino_head", "ibot_head"):
        norm = np.sqrt(sum(np.sum(v**2) for k, v in ours.items() if k.startswith(module + "/")))
        assert norm == pytest.approx(MAX_NORM, rel=1e-5)


def test_per_module_clipping_leaves_small_modules_and_scales_whole_large_ones():
    g = {
        "backbone": {"a": jnp.full((4,), 0.9), "b": jnp.full((4,), 0.9)},  # norms 1.8, 1.8
        "dino_head": {"a": jnp.full((4,), 0.1)},  # norm 0.2: untouched
    }
    out, _ = clip_by_group_norm(2.0, module_labels(g)).update(g, None)
    coef = 2.0 / (np.sqrt(2 * 1.8**2) + 1e-6)  # the backbone's total norm is 2.55
    np.testing.assert_allclose(out["backbone"]["a"], 0.9 * coef, rtol=1e-6)
    np.testing.assert_allclose(out["backbone"]["b"], 0.9 * coef, rtol=1e-6)
    np.testing.assert_array_equal(out["dino_head"]["a"], g["dino_head"]["a"])
    untouched, _ = clip_by_tensor_norm(2.0).update(g, None)  # each tensor's norm is below 2
    np.testing.assert_array_equal(untouched["backbone"]["a"], g["backbone"]["a"])


# --- (b) whole AdamW runs against torch.optim.AdamW as each reference drives it ---


def _tiny_student():
    """A student with DINOv2's module names: backbone, dino head, iBOT head ([in, out] kernels)."""
    rng = np.random.default_rng(1)
    shape = {
        "backbone": {"w": (3, 4), "bias": (4,)},
        "dino_head": {"mlp": {"kernel": (4, 5)}, "last_layer": {"kernel": (5, 6)}},
        "ibot_head": {"last_layer": {"kernel": (5, 3), "bias": (3,)}},
    }
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
        shape,
        is_leaf=lambda x: isinstance(x, tuple),
    )


STEPS, FROZEN = 6, 2
# optax's bias correction 1 - b2**t runs in float32, where 0.999 is 1.3e-5 off: the Adam step is
# up to ~6e-6 off relative, ~3e-7 of these parameters per step (torch float32: under 1e-7).
PARAM_TOL = 5e-6
LRS = [0.05, 0.1, 0.08, 0.06, 0.04, 0.02]
WDS = [0.04, 0.05, 0.06, 0.07, 0.08, 0.09]


def _grads(params, step):
    return _random_like(params, 100 + step, scale=2.0)  # tensor norms ~5-10: clipping bites


def _torch_run(params, rule: str):
    """torch.optim.AdamW as DINOv2's `do_train` ("dinov2": per-module clip, last-layer lr 0
    while frozen) or DINO v1's `train_one_epoch` ("dino": per-tensor clip, last-layer grads
    None while frozen) drives it; one param group per tensor with DINOv2's flags. Returns
    ({path: param}, {path: (exp_avg, exp_avg_sq, step)}) after each step."""
    student = _torch_student(_named(params))
    named = _torch_params(student)
    last = regex_predicate(LAST_LAYER)
    groups = [
        {"params": [p], "is_last_layer": last(k), "wd_multiplier": float(p.ndim > 1)}
        for k, p in named.items()
    ]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    history = []
    for step in range(STEPS):
        frozen = step < FROZEN
        for group in opt.param_groups:  # apply_optim_scheduler
            last_layer_lr = 0.0 if frozen and rule == "dinov2" else LRS[step]
            group["lr"] = last_layer_lr if group["is_last_layer"] else LRS[step]
            group["weight_decay"] = WDS[step] * group["wd_multiplier"]
        for k, g in _named(_grads(params, step)).items():
            named[k].grad = torch.tensor(g)
        if rule == "dinov2":
            for module in student.values():
                module_params = list(module.parameters())
                torch.nn.utils.clip_grad_norm_(module_params, MAX_NORM)
        else:
            for p in named.values():  # utils.clip_gradients
                coef = MAX_NORM / (p.grad.norm(2) + 1e-6)
                if coef < 1:
                    p.grad.mul_(coef)
            if frozen:  # utils.cancel_gradients_last_layer
                for k, p in named.items():
                    if last(k):
                        p.grad = None
        opt.step()
        moments = {  # copies: torch updates its state tensors in place
            k: tuple(opt.state[p][m].clone().numpy() for m in ("exp_avg", "exp_avg_sq", "step"))
            for k, p in named.items()
            if p in opt.state
        }
        history.append(({k: p.detach().numpy().copy() for k, p in named.items()}, moments))
    return history


def _pathfm_run(params, clip_rule: str, freeze_rule: str):
    opt = adamw(
        params,
        lambda s: jnp.asarray(LRS)[s],
        lambda s: jnp.asarray(WDS)[s],
        clip_grad=MAX_NORM,
        clip_rule=clip_rule,
        frozen=regex_predicate(LAST_LAYER),
        frozen_steps=FROZEN,
        freeze_rule=freeze_rule,
    )
    state = opt.init(params)
    update = jax.jit(opt.update)
    history = []
    for step in range(STEPS):
        updates, state = update(_grads(params, step), state, params)
        params = optax.apply_updates(params, updates)
        history.append((_named(params), state))
    return history


def _max_rel(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]) / (1.0 + np.abs(b[k])))) for k in b)


def test_zero_lr_freezing_matches_torch_adamw_with_last_layer_lr_zero():
    params = _tiny_student()
    theirs = _torch_run(params, "dinov2")
    ours = _pathfm_run(params, "per_module", "zero_lr")
    for step, ((p, state), (tp, tm)) in enumerate(zip(ours, theirs, strict=True)):
        adam = next(s for s in state if isinstance(s, optax.ScaleByAdamState))
        assert int(adam.count) == step + 1
        assert all(int(m[2]) == step + 1 for m in tm.values())  # torch stepped every tensor
        mu, nu = _named(adam.mu), _named(adam.nu)
        diffs = (
            _max_rel(p, tp),
            _max_rel(mu, {k: m[0] for k, m in tm.items()}),
            _max_rel(nu, {k: m[1] for k, m in tm.items()}),
        )
        print(f"zero_lr step {step}: max rel |diff| params {diffs[0]:.1e} mu {diffs[1]:.1e} "
              f"nu {diffs[2]:.1e}")  # fmt: skip
        assert diffs[0] < PARAM_TOL and max(diffs[1:]) < 1e-6
        frozen = [k for k in p if regex_predicate(LAST_LAYER)(k)]
        if step < FROZEN:  # no update, no weight decay, but moments that moved
            initial = _named(params)
            assert all(np.array_equal(p[k], initial[k]) for k in frozen)
            assert all(np.any(mu[k] != 0) for k in frozen)
    # DINO v1's rule on the same run: the thawed last layer moves differently.
    dropped = _max_rel(_pathfm_run(params, "per_module", "drop")[FROZEN][0], theirs[FROZEN][0])
    print(f"drop rule vs DINOv2 at the thaw: max rel |diff| {dropped:.2f}")
    assert dropped > 1e-2


def test_drop_freezing_matches_torch_adamw_skipping_none_grads():
    params = _tiny_student()
    theirs = _torch_run(params, "dino")
    ours = _pathfm_run(params, "per_tensor", "drop")
    for step, ((p, _), (tp, tm)) in enumerate(zip(ours, theirs, strict=True)):
        diff = _max_rel(p, tp)
        print(f"drop step {step}: max rel |diff| params {diff:.1e}")
        assert diff < PARAM_TOL
        steps = {k: int(m[2]) for k, m in tm.items()}  # torch has no state before a step
        assert steps.get("dino_head/last_layer/kernel", 0) == max(0, step + 1 - FROZEN)
    zero_lr = _max_rel(_pathfm_run(params, "per_tensor", "zero_lr")[-1][0], theirs[-1][0])
    print(f"zero_lr rule vs DINO v1: max rel |diff| {zero_lr:.2f}")
    assert zero_lr > 1e-2


def test_clipping_rules_give_different_runs():
    """Adam's first step is scale-free (g / |g|); from the second on the clipping rule shows."""
    params = _tiny_student()
    start = _named(params)
    moved = lambda rule: {
        k: v - start[k] for k, v in _pathfm_run(params, rule, "zero_lr")[-1][0].items()
    }
    per_module, per_tensor = moved("per_module"), moved("per_tensor")
    diff = max(np.max(np.abs(per_module[k] - v)) / np.max(np.abs(v)) for k, v in per_tensor.items())
    print(f"per-module vs per-tensor clipping: parameter change differs by {diff:.2f} relative")
    assert diff > 0.1


def test_unknown_rules_are_refused():
    params = _tiny_student()
    with pytest.raises(ValueError, match="clip_rule"):
        adamw(params, lambda s: 0.1, lambda s: 0.0, clip_rule="global")
    with pytest.raises(ValueError, match="freeze_rule"):
        adamw(params, lambda s: 0.1, lambda s: 0.0, freeze_rule="none")


@pytest.mark.parametrize(
    "method,clip_rule,freeze_rule",
    [
        ("dino", "per_tensor", "drop"),
        ("dinov2", "per_module", "zero_lr"),
        ("mae", "per_tensor", "drop"),
    ],
)
def test_each_method_declares_its_references_rules(method, clip_rule, freeze_rule):
    from pathfm.config import base_config

    config = base_config()
    config.method = method
    m = build_method(config)
    assert (m.clip_rule, m.freeze_rule) == (clip_rule, freeze_rule)


# --- (c) kaiko's DINOv2 config: DINOv2's CLS layout in training, timm's on export ---


def _load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_kaiko_dinov2_trains_in_dinov2_layout_and_exports_timm_reg4(tmp_path):
    pytest.importorskip("timm")
    from interop.timm_util import make_run, timm_model, timm_tokens

    from pathfm.interop.timm_export import export_backbone
    from pathfm.interop.timm_import import load_backbone

    full = _load_config("kaiko_dinov2_vitl14_reg4")
    assert (full.model.num_registers, full.model.no_embed_class) == (4, False)
    config = _load_config("kaiko_dinov2_vitl14_reg4", "quick")
    run = make_run(config)  # random student and teacher weights, CLS position row nonzero
    backbone = run.method.backbone(run.params, run.extra, "teacher")
    n = (config.model.img_size // config.model.patch_size) ** 2
    pos = backbone.params["pos_embed"]  # [1, 1 + N, D]: a CLS row, none for the registers
    cls = backbone.params["cls_token"]  # [1, 1, D]
    assert pos.shape == (1, 1 + n, config.model.embed_dim) and np.any(pos[:, 0] != 0)

    d = config.data
    description = export_backbone(backbone, tmp_path, {"mean": list(d.mean), "std": list(d.std)})
    kwargs = description["timm_kwargs"]
    assert (kwargs["no_embed_class"], kwargs["reg_tokens"]) == (True, 4)
    model = timm_model(description, tmp_path)
    state = model.state_dict()
    np.testing.assert_allclose(state["cls_token"].numpy(), cls + pos[:, :1], rtol=1e-6)
    assert tuple(state["pos_embed"].shape) == (1, n, config.model.embed_dim)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    ours = run.tokens(images, "teacher")
    theirs = timm_tokens(model, images, d.mean, d.std)
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs, strict=True)]
    print(f"kaiko_dinov2 quick export: max |diff| CLS {diffs[0]:.1e} patches {diffs[1]:.1e}")
    assert max(diffs) < 1e-5

    # model.init_from of that timm reg4 file: the folded CLS in cls_token, a zero CLS pos row.
    student = run.method.backbone(run.params, run.extra, "student")
    path = tmp_path / description["files"]["safetensors"]
    imported = load_backbone(path, "", student.config, student.params)
    np.testing.assert_array_equal(imported["pos_embed"][:, 0], 0.0)
    np.testing.assert_array_equal(imported["cls_token"], state["cls_token"].numpy())
    params, extra = run.method.with_backbone(run.params, run.extra, imported)
    run_imported = type(run)(config, run.method, params, extra)
    for which in ("teacher", "student"):
        again = run_imported.tokens(images, which)
        diffs = [float(np.max(np.abs(a - b))) for a, b in zip(again, ours, strict=True)]
        print(f"init_from ({which}): max |diff| CLS {diffs[0]:.1e} patches {diffs[1]:.1e}")
        assert max(diffs) < 1e-5
