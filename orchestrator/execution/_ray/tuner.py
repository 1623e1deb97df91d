"""A restored ``Tuner``'s callbacks, set through Ray 2.58's private ``Tuner._local_tuner``."""

from __future__ import annotations

from typing import Any


def set_restored_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Put ``callbacks`` on a tuner made by ``Tuner.restore``, which takes no run_config: Tune's
    saved state holds the callbacks only as empty shells (Podium's pickle so), so they are set
    on the restored run config directly."""
    assert tuner._local_tuner is not None
    tuner._local_tuner._run_config.callbacks = callbacks
