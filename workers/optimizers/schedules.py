"""Learning-rate schedules (spec ``training.lr_schedule``).

Contract used by the training loop:
    check_schedule(section: dict | None) -> list[tuple[str, object, str]]   # (key, value, message)
    build_schedule(optimizer, section, steps_per_epoch, max_epochs) -> Scheduler | None
The returned scheduler's ``step()`` is called once per optimizer step.
The foundation knows only ``{name: none}``; the optimizer-catalogue issue adds step, cosine,
one-cycle and warm-up.
"""

from __future__ import annotations

from typing import Any

SCHEDULE_NAMES = ("none",)


def check_schedule(section: dict[str, Any] | None) -> list[tuple[str, Any, str]]:
    if not section:
        return []
    name = section.get("name", "none")
    if name not in SCHEDULE_NAMES:
        return [("name", name, f"{name!r} is not one of: {', '.join(SCHEDULE_NAMES)}")]
    return []


def build_schedule(optimizer, section, steps_per_epoch: int, max_epochs: int):  # noqa: ANN001
    return None
