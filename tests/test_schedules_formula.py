import math

import pytest

from transferkit.config import ScheduleConfig
from transferkit.errors import UserError
from transferkit.schedules import SCHEDULES, lr_factor

SPE = 10  # steps per epoch
TOTAL = 200


@pytest.mark.parametrize("step", [0, 7, 10, 33, 99, 150, 199])
def test_each_schedule_equals_its_formula(step):
    w = 20  # 2 warmup epochs
    cases = {
        "constant": lambda s: 1.0,
        "cosine": lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / (TOTAL - w))),
        "linear": lambda s: 1 - 0.9 * s / (TOTAL - w),
        "step": lambda s: 0.5 ** math.floor(s / 30),
        "multistep": lambda s: 0.5 ** sum(s >= m * SPE for m in (4, 9)),
        "exponential": lambda s: 0.8 ** (s / 25),
    }
    for name, f in cases.items():
        cfg = ScheduleConfig(name=name, warmup_epochs=2, min_lr_ratio=0.1, step_size=3, gamma=0.5, milestones=[4, 9], decay_rate=0.8, decay_steps=25)
        got = lr_factor(cfg, step, TOTAL, SPE)
        want = (step + 1) / w if step < w else f(step if name in ("step", "multistep", "exponential") else step - w)
        assert got == pytest.approx(want, rel=1e-12), (name, step)


@pytest.mark.parametrize("spe", [5, 45, 7])
def test_step_with_a_fractional_step_size_equals_its_formula(spe):
    """step_size 1.5: the period is 1.5 * steps_per_epoch steps, not that rounded (with 45 steps an
    epoch, the drops came at 136 and 204 where the formula says 135 and 203)."""
    cfg = ScheduleConfig(name="step", warmup_epochs=0, step_size=1.5, gamma=0.5)
    got = [lr_factor(cfg, s, 10 * spe, spe) for s in range(10 * spe)]
    assert got == [0.5 ** math.floor(s / (1.5 * spe)) for s in range(10 * spe)]
    ms = ScheduleConfig(name="multistep", warmup_epochs=0, milestones=[1.5, 3.5], gamma=0.5)
    assert [lr_factor(ms, s, 10 * spe, spe) for s in range(10 * spe)] == [0.5 ** sum(s >= m * spe for m in (1.5, 3.5)) for s in range(10 * spe)]


def test_step_decays_count_the_epochs_of_the_run_warmup_included():
    """--schedule multistep --milestones 2: the rate drops after epoch 2, as the help says (and as
    torch's MultiStepLR does); it dropped after epoch 3, the milestone counted from the end of warmup."""
    cfg = ScheduleConfig(name="multistep", warmup_epochs=1, milestones=[2], gamma=0.1)
    per_epoch = [lr_factor(cfg, e * SPE + SPE - 1, 4 * SPE, SPE) for e in range(4)]  # each epoch's last step
    assert per_epoch == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_warmup_is_at_most_half_the_run():
    """The default 1-epoch warmup of a 1-epoch run: half warmup, then the cosine down to 0 (it was all
    warmup, ending at the full rate)."""
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)
    curve = [lr_factor(cfg, s, SPE, SPE) for s in range(SPE)]
    assert curve[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve[5:] == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(5)])
    assert lr_factor(cfg, 3, 4 * SPE, SPE) == pytest.approx(0.4)  # a longer run keeps its full warmup of 10 steps


@pytest.mark.parametrize("step", [0, 24, 25, 26, 49, 50, 173])
def test_exponential_staircase_matches_keras(step):
    cfg = ScheduleConfig(name="exponential", warmup_epochs=0, decay_rate=0.9, decay_steps=25, staircase=True)
    assert lr_factor(cfg, step, 1000, 10) == pytest.approx(0.9 ** (step // 25))
    smooth = ScheduleConfig(name="exponential", warmup_epochs=0, decay_rate=0.9, decay_steps=25)
    assert lr_factor(smooth, step, 1000, 10) == pytest.approx(0.9 ** (step / 25))


def test_onecycle_shape():
    cfg = ScheduleConfig(name="onecycle", warmup_epochs=0, pct_start=0.25, div_factor=10, final_div_factor=100)
    curve = [lr_factor(cfg, s, 100, 10) for s in range(101)]
    assert curve[0] == pytest.approx(0.1)
    assert curve[25] == pytest.approx(1.0)
    assert curve[100] == pytest.approx(1 / 1000)
    assert max(curve) == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(curve[:25], curve[1:26]))
    assert all(a >= b - 1e-12 for a, b in zip(curve[25:], curve[26:]))


def test_unknown_schedule_suggests():
    with pytest.raises(UserError, match="cosine"):
        SCHEDULES.get("cosin")


def test_a_huge_warmup_is_half_the_run_not_an_overflow():
    """1e308 warmup epochs times the steps of one epoch is inf: int() raised OverflowError mid-fit."""
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1e308)
    assert [lr_factor(cfg, s, 20, 5) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
