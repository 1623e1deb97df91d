"""Fixtures of the orchestrator tests that run a real Ray Tune."""

from __future__ import annotations

import pytest
import ray

from orchestrator.execution.fit import QUIET_TUNE


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module, with Tune as `podium run` sets it up."""
    with pytest.MonkeyPatch.context() as env:
        for k, v in QUIET_TUNE.items():  # as `podium run` sets them (no CSV/JSON loggers)
            env.setenv(k, v)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()
