"""Podium's driver: the spec, the search, running a sweep on Ray Tune and concluding it in the
registry; ``cli`` and ``api`` are the front (see docs/LAYOUT.md)."""
