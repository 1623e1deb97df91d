"""The leaderboard's order agrees with the default selection: test accuracy, then trial id."""

from __future__ import annotations

from orchestrator.api import _rank
from orchestrator.registry.leaderboard import TrialRow
from tracking import keys
from tracking.selection import Candidate, policy_from, select_best


def test_a_tie_on_test_accuracy_puts_the_promoted_trial_first():
    rows = [
        TrialRow("t2", "r2", "completed", {keys.TEST_ACCURACY: 0.9, keys.VAL_ACCURACY: 0.95}, {}),
        TrialRow("t1", "r1", "completed", {keys.TEST_ACCURACY: 0.9, keys.VAL_ACCURACY: 0.85}, {}),
        TrialRow("t3", "r3", "failed", {keys.TEST_ACCURACY: 0.99}, {}),
        TrialRow("t0", "r0", "completed", {keys.TEST_ACCURACY: 0.8}, {}),
    ]
    ranked = [r.trial_id for r in sorted(rows, key=_rank)]
    winner = select_best(
        [Candidate(r.trial_id, r.metrics, r.status, r.run_id, r.params) for r in rows],
        policy_from({"objectives": [{"metric": keys.TEST_ACCURACY, "mode": "max"}]}),
    ).winner
    assert ranked == ["t1", "t2", "t0", "t3"]
    assert winner is not None and winner.trial_id == ranked[0]
