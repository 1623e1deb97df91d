"""Running a sweep: the lifecycle (``runner``), ``Tuner.fit`` (``fit``), the function each trial
runs, the driver-side callbacks, the ledger of finished trials, resources, fail-fast and the Ray
session; Ray's private names only under ``_ray``."""
