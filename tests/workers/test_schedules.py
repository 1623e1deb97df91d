"""Learning-rate schedules: the shapes, driven through a real optimizer, and their validation."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.errors import SpecError
from orchestrator.spec import parse_spec
from workers.optimizers.schedules import build_schedule, check_schedule, lr_factor


def _lrs(section, steps_per_epoch: int, max_epochs: int, lr: float = 0.1) -> list[float]:
    """The lr a real SGD uses at each optimizer step, with the schedule stepped after each."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = build_schedule(opt, section, steps_per_epoch, max_epochs)
    out = []
    for _ in range(steps_per_epoch * max_epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_none_is_constant_and_builds_no_scheduler():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_schedule(opt, None, 10, 3) is None
    assert build_schedule(opt, {"name": "none"}, 10, 3) is None
    assert _lrs({"name": "none"}, 4, 2) == [0.1] * 8


def test_warmup_rises_linearly_then_holds():
    lrs = _lrs({"name": "none", "warmup_epochs": 1}, 4, 3)
    assert lrs[:4] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert lrs[4:] == pytest.approx([0.1] * 8)


def test_step_decays_by_gamma_every_step_epochs_after_warmup():
    lrs = _lrs({"name": "step", "step_epochs": 2, "gamma": 0.5, "warmup_epochs": 1}, 3, 7)
    per_epoch = lrs[::3]
    assert per_epoch[0] == pytest.approx(0.1 / 4)  # first warm-up step: 1/(w+1), w = 3 steps
    assert per_epoch[1:] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_cosine_goes_from_lr_to_the_floor_monotonically():
    lrs = _lrs({"name": "cosine", "min_lr_ratio": 0.1}, 5, 4)
    assert lrs[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    mid = len(lrs) // 2
    assert lrs[mid] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * mid / len(lrs))))
    assert lrs[-1] > 0.01  # the floor is reached one step after the last
    assert lr_factor({"name": "cosine", "min_lr_ratio": 0.1}, 20, 5, 4) == pytest.approx(0.1)


def test_onecycle_matches_torchs_one_cycle_lr():
    spe, epochs, peak = 7, 5, 0.3
    ours = _lrs({"name": "onecycle", "pct_start": 0.25}, spe, epochs, lr=peak)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=peak, total_steps=spe * epochs, pct_start=0.25, cycle_momentum=False
    )
    theirs = []
    for _ in range(spe * epochs):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours[0] == pytest.approx(peak / 25) and 0.99 * peak < max(ours) <= peak
    assert ours[-1] == pytest.approx(peak / 25 / 1e4)
    assert ours == pytest.approx(theirs, rel=1e-6)


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"name": "cosinus"}, "name", "is not one of: none, step, cosine, onecycle"),
        ({"name": "step", "gamma": 1.5}, "gamma", "must be <= 1.0"),
        ({"name": "step", "step_epochs": 0}, "step_epochs", "must be >= 1"),
        ({"name": "cosine", "gamma": 0.5}, "gamma", "takes no key 'gamma'"),
        ({"name": "onecycle", "warmup_epochs": 2}, "warmup_epochs", "set pct_start"),
        ({"name": "none", "warmup_epochs": -1}, "warmup_epochs", "must be >= 0"),
    ],
)
def test_check_schedule_names_the_bad_key_and_value(section, key, fragment):
    problems = check_schedule(section)
    assert [(k, v) for k, v, _ in problems] == [(key, section[key])]
    assert fragment in problems[0][2]


def test_spec_validation_reports_schedule_problems_with_their_path():
    with pytest.raises(SpecError) as e:
        parse_spec(
            {
                "name": "s",
                "training": {"lr_schedule": {"name": "step", "gamma": {"choice": [0.5, 2.0]}}},
            }
        )
    [problem] = e.value.problems
    assert (problem.path, problem.value) == ("training.lr_schedule.gamma", 2.0)
    spec = parse_spec(
        {"name": "s", "training": {"lr_schedule": {"name": "cosine", "warmup_epochs": 1}}}
    )
    assert spec.training["lr_schedule"]["name"] == "cosine"
