import math

import jax
import numpy as np
import pytest

from pathfm.config import base_config
from pathfm.schedules import as_array, cosine_schedule, epoch_linear_warmup, mae_cosine_schedule
from pathfm.ssl.registry import build_method
from pathfm.train.optimizer import build_optimizer


def reference_cosine_scheduler(base, final, epochs, niter, warmup_epochs=0, start_warmup=0.0):
    """facebookresearch/dino utils.cosine_scheduler, verbatim."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup, base, warmup_iters)
    iters = np.arange(epochs * niter - warmup_iters)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup_schedule, schedule))


@pytest.mark.parametrize("warmup", [0, 2])
def test_cosine_matches_dino_reference_value_for_value(warmup):
    ref = reference_cosine_scheduler(1e-3, 1e-6, 10, 7, warmup)
    ours = as_array(cosine_schedule(1e-3, 1e-6, 70, warmup * 7), 70)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9)


def test_cosine_endpoints_and_clamp():
    sched = cosine_schedule(0.996, 1.0, 100)
    assert float(sched(0)) == pytest.approx(0.996)
    assert 0.99999 < float(sched(99)) <= 1.0
    assert float(sched(500)) == float(sched(99))  # past the end the last value holds
    warm = cosine_schedule(2.0, 0.0, 50, warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(9)) == pytest.approx(2.0)
    assert float(warm(10)) == pytest.approx(2.0)


def test_teacher_temperature_warms_up_per_epoch():
    # np.concatenate((np.linspace(0.04, 0.07, 3), np.ones(7) * 0.07)) indexed by epoch.
    ref = np.concatenate((np.linspace(0.04, 0.07, 3), np.ones(7) * 0.07))
    sched = epoch_linear_warmup(0.04, 0.07, 3, steps_per_epoch=5)
    ours = as_array(sched, 50)
    np.testing.assert_allclose(ours, np.repeat(ref, 5), rtol=1e-6)
    constant = as_array(epoch_linear_warmup(0.04, 0.04, 0, 5), 10)
    np.testing.assert_allclose(constant, 0.04)


def reference_mae_lr(lr, min_lr, epochs, warmup_epochs, epoch):
    """facebookresearch/mae util/lr_sched.py adjust_learning_rate, as written there."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs))
    )


@pytest.mark.parametrize("warmup_epochs,steps_per_epoch", [(2, 3), (1, 2), (5, 7)])
def test_mae_lr_matches_adjust_learning_rate_at_every_iteration(warmup_epochs, steps_per_epoch):
    # main_pretrain.py calls it with epoch = data_iter_step / len(data_loader) + epoch
    epochs = 10
    total = epochs * steps_per_epoch
    ref = [
        reference_mae_lr(1.5e-4, 1e-6, epochs, warmup_epochs, i / steps_per_epoch)
        for i in range(total)
    ]
    ours = as_array(
        mae_cosine_schedule(1.5e-4, 1e-6, total, warmup_epochs * steps_per_epoch), total
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("method,first_lr", [("mae", 0.5), ("dino", 1.0)])
def test_each_method_warms_up_as_its_reference(method, first_lr):
    """A 2-iteration warm-up: MAE's lr at step 1 is half the peak (i / W); DINO's linspace
    already reaches the peak (i / (W - 1))."""
    config = base_config()
    config.method, config.epochs, config.steps_per_epoch = method, 4, 2
    config.optim.update(warmup_epochs=1, lr=256.0, lr_scaling="linear256")
    config.batch_size = 1  # peak = lr * batch / 256 = 1.0
    method = build_method(config)
    params = jax.eval_shape(method.init, jax.random.key(0))[0]  # shapes only
    _, schedules = build_optimizer(config, method, params)
    assert float(schedules["lr"](0)) == 0.0
    assert float(schedules["lr"](1)) == pytest.approx(first_lr)


class ReferenceCosineScheduler:
    """facebookresearch/dinov2 `dinov2/utils/utils.py` `CosineScheduler` (verbatim but for
    one redundant pair of parentheses)."""

    def __init__(
        self,
        base_value,
        final_value,
        total_iters,
        warmup_iters=0,
        start_warmup_value=0,
        freeze_iters=0,
    ):
        self.final_value = final_value
        self.total_iters = total_iters
        freeze_schedule = np.zeros(freeze_iters)
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
        iters = np.arange(total_iters - warmup_iters - freeze_iters)
        schedule = final_value + 0.5 * (base_value - final_value) * (
            1 + np.cos(np.pi * iters / len(iters))
        )
        self.schedule = np.concatenate((freeze_schedule, warmup_schedule, schedule))
        assert len(self.schedule) == self.total_iters

    def __getitem__(self, it):
        return self.final_value if it >= self.total_iters else self.schedule[it]


def test_dinov2_schedules_match_its_cosine_scheduler_at_every_iteration():
    """lr, wd, teacher momentum and teacher temperature of a DINOv2 run, as `train.py`
    `build_schedulers` makes them (epoch length = steps_per_epoch), at every iteration."""
    from pathfm.config import dinov2_defaults

    config = dinov2_defaults(base_config())
    config.epochs, config.steps_per_epoch, config.batch_size = 6, 5, 1024  # sqrt(1024/1024) = 1
    config.model.update(size="T", patch_size=8, img_size=32, embed_dim=32, depth=1, num_heads=2)
    config.dino.update(out_dim=64, hidden_dim=32, bottleneck_dim=16, warmup_teacher_temp_epochs=2)
    config.optim.update(warmup_epochs=2)
    method = build_method(config)
    params = jax.eval_shape(method.init, jax.random.key(0))[0]
    _, schedules = build_optimizer(config, method, params)
    o, d, n = config.optim, config.dino, config.steps_per_epoch
    total = config.epochs * n
    references = {
        "lr": (schedules["lr"], ReferenceCosineScheduler(o.lr, o.min_lr, total, 2 * n)),
        "wd": (
            schedules["wd"],
            ReferenceCosineScheduler(o.weight_decay, o.weight_decay_end, total),
        ),
        "momentum": (method.momentum, ReferenceCosineScheduler(d.momentum_teacher, 1.0, total)),
        "teacher_temp": (
            method.teacher_temp,
            ReferenceCosineScheduler(
                d.teacher_temp, d.teacher_temp, 2 * n, 2 * n, d.warmup_teacher_temp
            ),
        ),
    }
    for name, (ours, ref) in references.items():
        np.testing.assert_allclose(
            as_array(ours, total), [ref[i] for i in range(total)], rtol=1e-5, err_msg=name
        )
