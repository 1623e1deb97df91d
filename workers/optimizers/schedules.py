"""Learning-rate schedules (spec ``training.lr_schedule``): none, step, cosine, onecycle; warm-up.

Contract used by the training loop:
    check_schedule(section: dict | None) -> list[tuple[str, object, str]]   # (key, value, message)
    build_schedule(optimizer, section, steps_per_epoch, max_epochs) -> Scheduler | None
The returned scheduler's ``step()`` is called once per optimizer step, so every schedule is a
function of the optimizer-step count; epochs in the spec are converted with ``steps_per_epoch``.

The multiplier of the optimizer's ``lr`` at step ``s`` (:func:`lr_factor`, a pure function):

* warm-up (``warmup_epochs`` = W epochs = w steps, any name but onecycle): ``(s + 1) / (w + 1)``
  rising linearly towards 1, then the named schedule runs on the remaining steps;
* ``none``: 1;
* ``step``: ``gamma ** floor(epochs_since_warmup / step_epochs)``;
* ``cosine``: from 1 down to ``min_lr_ratio`` along half a cosine, over the remaining steps;
* ``onecycle``: (Smith 2018; torch's ``OneCycleLR`` shape, cosine annealing) from
  ``1 / div_factor`` up to 1 over the first ``pct_start`` of training, then down to
  ``1 / (div_factor * final_div_factor)``; ``lr`` is the peak. It has its own warm-up phase.

Example:
    >>> sec = {"name": "cosine", "warmup_epochs": 1}
    >>> [round(lr_factor(sec, s, steps_per_epoch=2, max_epochs=3), 3) for s in range(6)]
    [0.333, 0.667, 1.0, 0.854, 0.5, 0.146]
"""

from __future__ import annotations

import math
from typing import Any

import torch

from workers.optimizers._base import HParam

SCHEDULE_NAMES = ("none", "step", "cosine", "onecycle")

WARMUP = HParam(
    0, "epochs of linear warm-up before the schedule (fractions allowed)", float, low=0.0
)
# Keys each schedule takes (besides ``name``), with defaults, types and ranges; the one source for
# validation, building and the docs.
SCHEDULE_KEYS: dict[str, dict[str, HParam]] = {
    "none": {"warmup_epochs": WARMUP},
    "step": {
        "warmup_epochs": WARMUP,
        "step_epochs": HParam(10, "multiply the lr by gamma every this many epochs", int, 1, None),
        "gamma": HParam(0.1, "the factor applied every step_epochs", float, 0.0, 1.0),
    },
    "cosine": {
        "warmup_epochs": WARMUP,
        "min_lr_ratio": HParam(0.0, "final lr as a fraction of lr", float, 0.0, 1.0),
    },
    "onecycle": {
        "pct_start": HParam(
            0.3, "fraction of training spent rising to the peak lr", float, 0.0, 1.0
        ),
        "div_factor": HParam(25.0, "start lr = lr / div_factor", float, 1.0, None),
        "final_div_factor": HParam(1e4, "final lr = start lr / final_div_factor", float, 1.0, None),
    },
}
SCHEDULE_DOCS = {
    "none": "constant lr (after the optional warm-up)",
    "step": "multiply the lr by gamma every step_epochs epochs",
    "cosine": "half-cosine decay from lr to min_lr_ratio * lr",
    "onecycle": "one cycle: rise from lr / div_factor to lr, then anneal far below it",
}


def check_schedule(section: dict[str, Any] | None) -> list[tuple[str, Any, str]]:
    """Problems in a ``training.lr_schedule`` section, as ``(key, bad value, message)``.

    Example:
        >>> check_schedule({"name": "cosine", "gamma": 0.5})[0][2]
        "schedule 'cosine' takes no key 'gamma'; it takes: min_lr_ratio, name, warmup_epochs"
    """
    if not section:
        return []
    name = section.get("name", "none")
    if name not in SCHEDULE_KEYS:
        return [("name", name, f"{name!r} is not one of: {', '.join(SCHEDULE_NAMES)}")]
    takes = SCHEDULE_KEYS[name]
    problems = []
    for key, value in section.items():
        if key == "name":
            continue
        if key not in takes:
            hint = "; onecycle warms up by itself (set pct_start)" if key == "warmup_epochs" else ""
            valid = ", ".join(sorted(["name", *takes]))
            unknown = f"schedule {name!r} takes no key {key!r}; it takes: {valid}{hint}"
            problems.append((key, value, unknown))
            continue
        msg = takes[key].check(value)
        if msg:
            problems.append((key, value, msg))
    return problems


def resolved(section: dict[str, Any] | None) -> dict[str, Any]:
    """The section with the named schedule's defaults filled in (``{name: none}`` if absent)."""
    section = dict(section or {})
    name = section.setdefault("name", "none")
    return {**{k: h.default for k, h in SCHEDULE_KEYS[name].items()}, **section}


def lr_factor(
    section: dict[str, Any] | None, step: int, steps_per_epoch: int, max_epochs: int
) -> float:
    """The multiplier of the base lr at optimizer step ``step`` (0-based); see the module doc."""
    s = resolved(section)
    total = max(1, steps_per_epoch * max_epochs)
    if s["name"] == "onecycle":
        return _onecycle(s, step, total)
    warm = int(round(s["warmup_epochs"] * steps_per_epoch))
    if step < warm:
        return (step + 1) / (warm + 1)
    t, span = step - warm, max(1, total - warm)
    if s["name"] == "step":
        return s["gamma"] ** (t // (s["step_epochs"] * steps_per_epoch))
    if s["name"] == "cosine":
        progress = min(t, span) / span
        floor = s["min_lr_ratio"]
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def _onecycle(s: dict[str, Any], step: int, total: int) -> float:
    start = 1.0 / s["div_factor"]
    end = start / s["final_div_factor"]
    # As torch's OneCycleLR: the peak at step pct_start * total - 1, the floor at the last step.
    peak_at = s["pct_start"] * total - 1
    if step <= peak_at:
        return _cos_anneal(start, 1.0, step / peak_at)
    return _cos_anneal(1.0, end, min(1.0, (step - peak_at) / max(1e-9, total - 1 - peak_at)))


def _cos_anneal(a: float, b: float, progress: float) -> float:
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * progress))


def build_schedule(
    optimizer: torch.optim.Optimizer,
    section: dict[str, Any] | None,
    steps_per_epoch: int,
    max_epochs: int,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A scheduler whose ``step()`` follows :func:`lr_factor`, or None for a constant lr.

    It scales every param group's initial ``lr``; building it already applies step 0's factor.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=1.0)
        >>> sched = build_schedule(opt, {"name": "step", "step_epochs": 1, "gamma": 0.5}, 2, 3)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
        >>> lrs
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    s = resolved(section)
    if s["name"] == "none" and not s["warmup_epochs"]:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(s, step, steps_per_epoch, max_epochs)
    )
