"""Selection is pure: these tests need neither Ray nor MLflow."""

from __future__ import annotations

import math

import pytest

from tracking.constraints import ConstraintError, parse_constraint
from tracking.selection import (
    Candidate,
    Objective,
    Policy,
    check_policy,
    decide_promotion,
    dominates,
    knee_point,
    mark_candidates,
    pareto_front,
    policy_from,
    select_best,
    weighted_pick,
)

ACC, LAT, SIZE = "test_accuracy", "latency_ms_p50", "model_size_bytes"
TWO = (Objective(ACC, "max"), Objective(LAT, "min"))


def cand(
    tid: str,
    acc: float | None = None,
    lat: float | None = None,
    size: float | None = None,
    status: str = "completed",
    split: str | None = "digits:seed=0",
    run: str | None = None,
    **extra: float,
) -> Candidate:
    m = {k: v for k, v in ((ACC, acc), (LAT, lat), (SIZE, size)) if v is not None}
    return Candidate(tid, {**m, **extra}, status=status, split=split, run_id=run or f"run-{tid}")


# --------------------------------------------------------------------------- constraints


@pytest.mark.parametrize(
    "text, metrics, broken",
    [
        ("latency_ms_p50 <= 1.0", {LAT: 1.0}, False),
        ("latency_ms_p50 < 1.0", {LAT: 1.0}, True),
        ("model_size_bytes <= 500000", {SIZE: 500001}, True),
        ("test_accuracy >= 0.85", {ACC: 0.85}, False),
        ("test_accuracy > 0.85", {ACC: 0.85}, True),
        ("param_count == 2410", {"param_count": 2410}, False),
        ("x>=-1e-3", {"x": -0.002}, True),
        ("test_accuracy >= 0.85", {}, True),  # missing metric: not feasible
        ("test_accuracy >= 0.85", {ACC: math.nan}, True),  # NaN never satisfies
    ],
)
def test_constraints_evaluate(text, metrics, broken):
    assert (parse_constraint(text).broken_by(metrics) is not None) == broken


@pytest.mark.parametrize(
    "bad",
    [
        "__import__('os').system('true') == 0",
        "latency_ms_p50 <= 1.0 or True",
        "acc => 0.9",
        "acc <= ",
        "<= 3",
        "acc <= 1.0; rm",
        "acc != 3",
        3,
        None,
    ],
)
def test_constraint_parser_refuses_anything_but_metric_op_number(bad):
    with pytest.raises(ConstraintError):
        parse_constraint(bad)


# --------------------------------------------------------------------------- policy validation


def test_check_policy_reports_every_bad_item_with_key_and_value():
    problems = check_policy(
        {
            "objectives": [{"metric": ACC, "mode": "maximum"}, {"metric": ACC}, "latency"],
            "constraints": ["latency_ms_p50 <= 1.0", "size < big", 7],
            "strategy": "paretoo",
            "pick": "elbow",
            "weights": [1.0, -2.0],
            "min_improvement": -0.1,
        }
    )
    got = {(k, str(v)) for k, v, _ in problems}
    assert got == {
        ("objectives[0].mode", "maximum"),
        ("objectives[1].metric", ACC),
        ("objectives[2]", "latency"),
        ("constraints[1]", "size < big"),
        ("constraints[2]", "7"),
        ("strategy", "paretoo"),
        ("pick", "elbow"),
        ("weights", "[1.0, -2.0]"),
        ("min_improvement", "-0.1"),
    }


def test_check_policy_accepts_a_full_valid_policy_and_policy_from_builds_it():
    section = {
        "objectives": [{"metric": ACC, "mode": "max"}, {"metric": LAT, "mode": "min"}],
        "constraints": ["model_size_bytes <= 500000"],
        "strategy": "pareto",
        "pick": "weighted",
        "weights": [2, 1],
        "min_improvement": 0.01,
    }
    assert check_policy(section) == []
    p = policy_from(section)
    assert p.objectives == TWO and p.weights == (2.0, 1.0) and p.pick == "weighted"
    assert p.parsed_constraints()[0].value == 500000


def test_weights_must_match_objectives():
    problems = check_policy(
        {"objectives": [{"metric": ACC}], "pick": "weighted", "weights": [1, 1]}
    )
    assert [k for k, _, _ in problems] == ["weights"]


def test_spec_validation_reports_policy_problems_with_dotted_paths():
    from orchestrator.errors import SpecError
    from orchestrator.spec import parse_spec

    with pytest.raises(SpecError) as e:
        parse_spec(
            {
                "name": "x",
                "promotion": {
                    "constraints": ["latency_ms_p50 <== 1"],
                    "strategy": "pareto",
                    "pick": "elbow",
                },
            }
        )
    paths = {p.path for p in e.value.problems}
    assert {"promotion.constraints[0]", "promotion.pick"} <= paths


# --------------------------------------------------------------------------- select_best


def test_best_ignores_failed_stopped_nan_inf_and_missing():
    cs = [
        cand("failed", 0.99, status="failed"),
        cand("stopped", 0.98, status="stopped"),
        cand("nan", math.nan),
        cand("inf", math.inf),
        cand("missing"),
        cand("diverged", 0.97, val_loss=math.nan),
        cand("ok", 0.90),
    ]
    d = select_best(cs, Policy())
    assert d.winner.trial_id == "ok"
    assert set(d.rejected) == {"failed", "stopped", "nan", "inf", "missing", "diverged"}
    assert "before its final evaluation" in d.rejected["stopped"]
    assert d.rejected["diverged"] == "val_loss is nan"


def test_best_ties_break_on_second_objective_then_trial_id():
    p = Policy(objectives=TWO)
    d = select_best([cand("b", 0.9, 2.0), cand("c", 0.9, 1.0), cand("a", 0.8, 0.1)], p)
    assert d.winner.trial_id == "c" and any("tied with b" in r for r in d.reasons)
    d = select_best([cand("z", 0.9, 1.0), cand("y", 0.9, 1.0)], p)
    assert d.winner.trial_id == "y"  # deterministic, not input order


def test_min_mode_objective():
    d = select_best(
        [cand("a", lat=2.0), cand("b", lat=0.5)], Policy(objectives=(Objective(LAT, "min"),))
    )
    assert d.winner.trial_id == "b"


def test_no_feasible_candidate_names_each_broken_constraint():
    p = Policy(constraints=("latency_ms_p50 <= 1.0", "model_size_bytes <= 1000"))
    d = select_best([cand("a", 0.9, 2.0, 500), cand("b", 0.95, 0.5, 9000), cand("c", 0.99)], p)
    assert d.winner is None
    assert d.rejected["a"] == "breaks latency_ms_p50 <= 1.0 (got 2)"
    assert d.rejected["b"] == "breaks model_size_bytes <= 1000 (got 9000)"
    assert "no latency_ms_p50" in d.rejected["c"] and "no model_size_bytes" in d.rejected["c"]


def test_constraints_filter_before_choosing():
    p = Policy(constraints=("latency_ms_p50 <= 1.0", "test_accuracy >= 0.85"))
    d = select_best([cand("fast-bad", 0.80, 0.2), cand("slow", 0.99, 4.0), cand("ok", 0.9, 0.9)], p)
    assert d.winner.trial_id == "ok"


def test_empty_input():
    assert select_best([], Policy()).winner is None


# --------------------------------------------------------------------------- Pareto


FRONT = [
    cand("acc", 0.99, 5.0),
    cand("knee", 0.97, 1.0),
    cand("fast", 0.80, 0.5),
    cand("dominated", 0.96, 2.0),
    cand("worst", 0.70, 6.0),
]


def test_pareto_front_and_dominance():
    assert [c.trial_id for c in pareto_front(FRONT, TWO)] == ["acc", "knee", "fast"]
    assert dominates(FRONT[1], FRONT[3], TWO) and not dominates(FRONT[0], FRONT[2], TWO)
    twins = [cand("a", 0.9, 1.0), cand("b", 0.9, 1.0)]
    assert len(pareto_front(twins, TWO)) == 2  # equal points do not dominate each other


def test_knee_is_the_balanced_point_not_an_extreme():
    front = pareto_front(FRONT, TWO)
    assert knee_point(front, TWO).trial_id == "knee"
    d = select_best(FRONT, Policy(objectives=TWO, strategy="pareto"))
    assert d.winner.trial_id == "knee" and any("Pareto front" in r for r in d.reasons)


def test_weighted_pick_follows_the_weights():
    front = pareto_front(FRONT, TWO)
    assert weighted_pick(front, TWO, (1.0, 0.0)).trial_id == "acc"
    assert weighted_pick(front, TWO, (0.0, 1.0)).trial_id == "fast"
    p = Policy(objectives=TWO, strategy="pareto", pick="weighted", weights=(1.0, 0.01))
    assert select_best(FRONT, p).winner.trial_id == "acc"


def test_pareto_with_three_objectives_and_constraint():
    objs = (*TWO, Objective(SIZE, "min"))
    cs = [cand("a", 0.99, 5.0, 100), cand("b", 0.97, 1.0, 900), cand("c", 0.96, 1.1, 100)]
    p = Policy(objectives=objs, strategy="pareto", constraints=("latency_ms_p50 <= 2",))
    d = select_best(cs, p)
    assert d.rejected == {"a": "breaks latency_ms_p50 <= 2 (got 5)"}
    # b and c trade off; scaled over a two-point front each wins its objectives outright, so the
    # point better on more objectives (b: accuracy and latency) is the closer to the ideal.
    assert d.winner.trial_id == "b"


def test_mark_candidates_for_the_leaderboard():
    p = Policy(objectives=TWO, constraints=("test_accuracy >= 0.75",))
    marks = mark_candidates(FRONT, p)
    assert {t for t, m in marks.items() if m.pareto} == {"acc", "knee", "fast"}
    assert marks["worst"].excluded == "breaks test_accuracy >= 0.75 (got 0.7)"
    assert marks["dominated"].excluded is None and not marks["dominated"].pareto


# --------------------------------------------------------------------------- champion/challenger


def test_no_champion_promotes_an_eligible_challenger():
    d = decide_promotion(cand("t1", 0.9), None, Policy())
    assert d.promote and d.winner.trial_id == "t1"


def test_ineligible_challenger_never_promoted():
    for ch in (cand("t", math.nan), cand("t", 0.99, status="stopped"), None):
        d = decide_promotion(ch, cand("v1", 0.5), Policy())
        assert not d.promote and d.winner.trial_id == "v1"


@pytest.mark.parametrize(
    "champ, chall, min_imp, promote",
    [
        (0.950, 0.960, 0.0, True),
        (0.950, 0.950, 0.0, False),  # a tie keeps the champion
        (0.950, 0.940, 0.0, False),
        (0.950, 0.954, 0.005, False),  # better, but not by min_improvement
        (0.950, 0.956, 0.005, True),
    ],
)
def test_challenger_must_beat_champion_by_min_improvement(champ, chall, min_imp, promote):
    d = decide_promotion(cand("t", chall), cand("v1", champ), Policy(min_improvement=min_imp))
    assert d.promote is promote
    assert d.winner.trial_id == ("t" if promote else "v1")


def test_tie_on_first_objective_broken_by_second():
    p = Policy(objectives=TWO)
    assert decide_promotion(cand("t", 0.9, 0.5), cand("v1", 0.9, 1.0), p).promote
    assert not decide_promotion(cand("t", 0.9, 1.5), cand("v1", 0.9, 1.0), p).promote


def test_pareto_challenger_must_dominate():
    p = Policy(objectives=TWO, strategy="pareto")
    assert not decide_promotion(cand("t", 0.99, 3.0), cand("v1", 0.9, 1.0), p).promote  # trade-off
    assert decide_promotion(cand("t", 0.95, 0.9), cand("v1", 0.9, 1.0), p).promote


def test_different_test_splits_are_not_compared():
    d = decide_promotion(cand("t", 0.99, split="digits:seed=1"), cand("v1", 0.5), Policy())
    assert not d.promote and "not comparable" in d.reasons[0]
    d = decide_promotion(cand("t", 0.99), cand("v1", 0.5, split=None), Policy())
    assert not d.promote


def test_champion_that_breaks_the_new_policy_is_replaced():
    p = Policy(constraints=("latency_ms_p50 <= 1",))
    d = decide_promotion(cand("t", 0.90, 0.5), cand("v1", 0.99, 3.0), p)
    assert d.promote and "no longer meets" in d.reasons[0]


def test_repromoting_the_same_run_is_a_no_op():
    champ = cand("v1", 0.9, run="r1")
    d = decide_promotion(cand("t", 0.9, run="r1"), champ, Policy())
    assert not d.promote and d.winner is champ and "already champion" in d.reasons[0]


def test_a_trial_best_on_test_but_not_on_validation_is_not_the_winner():
    from tracking.selection import within_sweep

    cands = [
        Candidate("peeks", {"test_accuracy": 0.99, "val_accuracy": 0.90}),
        Candidate("honest", {"test_accuracy": 0.95, "val_accuracy": 0.93}),
    ]
    policy = Policy(constraints=("test_accuracy >= 0.9",))
    assert select_best(cands, policy).winner.trial_id == "peeks"  # what choosing on test did
    chooser = within_sweep(policy, cands)
    decision = select_best(cands, chooser)
    assert decision.winner.trial_id == "honest"
    assert decision.reasons[-1].startswith("best val_accuracy (max) = 0.93")
    assert chooser.constraints == ("val_accuracy >= 0.9",)
    # Metrics with no validation twin (latency, size) and val_ objectives stay as written.
    mixed = Policy(objectives=(Objective("val_loss", "min"), Objective("latency_ms_p50", "min")))
    assert within_sweep(mixed, cands) == mixed
