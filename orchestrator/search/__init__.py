"""The search: the spec's spaces as Tune's, schedulers (Tune's, changed for Podium: early
stopping, HyperBand, PBT), model-based searchers and their warm start."""
