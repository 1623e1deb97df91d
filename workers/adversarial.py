"""Adversarial (zero-sum game) training: spec ``training.adversarial``.

Contract used by the training loop:
    check_adversarial(section: dict | None) -> list[tuple[str, object, str]]
    make_adversary(section) -> Callable[[model, x, y], x_adv] | None   # None: plain training
    robust_accuracy(model, x, y, section) -> float | None            # None when not configured
The foundation knows no adversary; the optimizer-catalogue issue adds FGSM/PGD.
"""

from __future__ import annotations

from typing import Any


def check_adversarial(section: dict[str, Any] | None) -> list[tuple[str, Any, str]]:
    if not section:
        return []
    return [("", section, "adversarial training is not available in this version")]


def make_adversary(section):  # noqa: ANN001, ANN201
    return None


def robust_accuracy(model, x, y, section):  # noqa: ANN001, ANN201
    return None
