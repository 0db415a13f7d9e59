import numpy as np
import pytest

from pathfm.schedules import as_array, cosine_schedule, epoch_linear_warmup


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
