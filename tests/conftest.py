"""Shared test set-up. Real services (PostgreSQL, mlflow server, Ray nodes) live in
tests/fixtures_services.py and are registered here."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures_services"]

# The test files that took longest (docs/BENCHMARKS.md, "The test suite"), longest first. `make
# test` runs two pytest workers, each taking the next whole file when it is free (`-n 2 --dist
# loadfile`: a file's module-scoped sweeps run once); starting the long files first leaves the
# short ones to fill in at the end instead of one worker finishing a long file alone.
LONGEST_FIRST = (
    "tests/integration/test_searchers.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_own_model.py",
    "tests/integration/test_search_state.py",
    "tests/integration/test_raw_inputs.py",
    "tests/faults/test_disk_full.py",
    "tests/integration/test_object_storage.py",
    "tests/faults/test_registry_teacher.py",
    "tests/integration/test_serve_replicas.py",
    "tests/integration/test_team_stack.py",
    "tests/integration/test_ray_client.py",
    "tests/integration/test_ui.py",
    "tests/integration/test_cluster.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first, then the other slow ones, then the rest (each file's own order
    kept): only the order changes, never what runs."""

    def rank(item: pytest.Item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        if path in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(path))
        return (1 if item.get_closest_marker("slow") else 2, 0)

    items.sort(key=rank)  # stable: a file's tests keep their order
