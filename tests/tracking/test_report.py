"""Reports from real (tiny) trained models: CSV contents and PNGs that really show the champion."""

from __future__ import annotations

import csv
import io
import math
import time

import numpy as np
import pytest
import torch

from tracking import keys
from tracking.report import curve_trials, leaderboard_rows, plot_pareto, write_reports
from tracking.selection import Candidate, Objective, Policy, select_best
from workers.models import build_model
from workers.tasks import load_task

POLICY = Policy(
    objectives=(Objective(keys.TEST_ACCURACY), Objective(keys.LATENCY_MS_P50, "min")),
    constraints=(f"{keys.TEST_ACCURACY} >= 0.5",),
    strategy="pareto",
)


def train_and_measure(hidden: list[int], steps: int, data) -> tuple[dict[str, float], list]:
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": hidden}, data.input_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    curve = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
        if step % 5 == 0:
            with torch.no_grad():
                curve.append(
                    (step // 5, (model(data.x_val).argmax(1) == data.y_val).float().mean().item())
                )
    model.eval()
    x1 = data.x_test[:1]
    times = []
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
        for _ in range(30):
            t0 = time.perf_counter()
            model(x1)
            times.append((time.perf_counter() - t0) * 1e3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return {
        keys.TEST_ACCURACY: acc,
        keys.LATENCY_MS_P50: float(np.median(times)),
        keys.MODEL_SIZE_BYTES: float(buf.tell()),
        keys.PARAM_COUNT: float(sum(p.numel() for p in model.parameters())),
    }, curve


@pytest.fixture(scope="module")
def sweep():
    data = load_task("digits", 0)
    cands, curves = [], {}
    for i, (hidden, steps) in enumerate([([8], 40), ([32], 40), ([256, 128], 40), ([4], 2)]):
        metrics, curve = train_and_measure(hidden, steps, data)
        tid = f"t{i}"
        cands.append(
            Candidate(tid, metrics, config={"model": {"hidden": hidden}, "optimizer": {"lr": 0.01}})
        )
        curves[tid] = curve
    cands.append(
        Candidate(
            "t-stopped",
            {keys.VAL_ACCURACY: 0.3},
            status="stopped",
            config={"model": {"hidden": [2]}, "optimizer": {"lr": 0.1}},
        )
    )
    cands.append(
        Candidate(
            "t-nan",
            {keys.TEST_ACCURACY: math.nan, keys.LATENCY_MS_P50: 0.1},
            status="completed",
            config={"model": {"hidden": [2]}, "optimizer": {"lr": 9.0}},
        )
    )
    return cands, curves


def test_leaderboard_marks_pareto_and_the_broken_constraint(sweep, tmp_path):
    cands, curves = sweep
    d = select_best(cands, POLICY)
    paths = write_reports(cands, POLICY, tmp_path, curves, champion=d.winner.trial_id)
    assert {p.name for p in paths} == {
        keys.LEADERBOARD_ARTIFACT,
        keys.PARETO_PLOT_ARTIFACT,
        keys.PARALLEL_PLOT_ARTIFACT,
        keys.CURVES_PLOT_ARTIFACT,
    }
    rows = list(csv.DictReader((tmp_path / keys.LEADERBOARD_ARTIFACT).open()))
    by_id = {r["trial_id"]: r for r in rows}
    # The 2-step model is barely trained and breaks the accuracy floor; the row says so, with its
    # value.
    assert by_id["t3"]["excluded"].startswith("breaks test_accuracy >= 0.5 (got 0.")
    assert by_id["t-stopped"]["excluded"] == "trial stopped before its final evaluation"
    assert by_id["t-nan"]["excluded"] == "test_accuracy is nan"
    assert [r["champion"] for r in rows].count("True") == 1 and by_id[d.winner.trial_id][
        "champion"
    ] == "True"
    assert by_id[d.winner.trial_id]["pareto"] == "True"
    # Eligible rows come first, ranked 1..n by accuracy; excluded ones have no rank.
    ranked = [r for r in rows if r["rank"]]
    assert [int(r["rank"]) for r in ranked] == list(range(1, len(ranked) + 1))
    accs = [float(r[keys.TEST_ACCURACY]) for r in ranked]
    assert accs == sorted(accs, reverse=True) and rows[-1]["rank"] == ""
    assert by_id["t2"]["config.model.hidden"] == "[256, 128]"


def test_pareto_flags_are_mutually_non_dominated(sweep):
    cands, _ = sweep
    rows = leaderboard_rows(cands, POLICY)
    front = [r for r in rows if r["pareto"]]
    others = [r for r in rows if not r["pareto"] and not r["excluded"]]
    acc, lat = keys.TEST_ACCURACY, keys.LATENCY_MS_P50
    for r in others:  # every non-front eligible row is beaten on both axes by some front row
        assert any(f[acc] >= r[acc] and f[lat] <= r[lat] for f in front)
    for f in front:
        assert not any(
            g[acc] >= f[acc] and g[lat] <= f[lat] and (g[acc], g[lat]) != (f[acc], f[lat])
            for g in front
        )


def _image(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(str(path))


def _gold_pixels(img) -> int:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]  # gold is (1.0, 0.84, 0.0)
    return int(((r > 0.95) & (abs(g - 0.84) < 0.05) & (b < 0.1)).sum())


def test_pareto_plot_highlights_the_champion(sweep, tmp_path):
    cands, _ = sweep
    champ = select_best(cands, POLICY).winner.trial_id
    with_champ = _image(plot_pareto(cands, POLICY, tmp_path / "a.png", champion=champ))
    without = _image(plot_pareto(cands, POLICY, tmp_path / "b.png", champion=None))
    assert with_champ.shape[0] > 300 and with_champ.shape[1] > 500
    assert _gold_pixels(with_champ) > 100 and _gold_pixels(without) == 0


def test_pareto_plot_falls_back_to_size_and_skips_when_nothing_to_plot(tmp_path):
    cands = [
        Candidate("a", {keys.TEST_ACCURACY: 0.9, keys.MODEL_SIZE_BYTES: 1e5}),
        Candidate("b", {keys.TEST_ACCURACY: 0.8, keys.MODEL_SIZE_BYTES: 1e4}),
    ]
    assert plot_pareto(cands, Policy(), tmp_path / "s.png") is not None
    assert (
        plot_pareto([Candidate("a", {keys.TEST_ACCURACY: 0.9})], Policy(), tmp_path / "n.png")
        is None
    )


def test_learning_curves_are_drawn_for_the_best_trials_and_the_champion():
    """A sweep of thousands draws (and queries the histories of) its best 50, not all."""
    cands = [Candidate(f"t{i:03d}", {keys.TEST_ACCURACY: i / 100}) for i in range(80)]
    drawn = curve_trials(cands, Policy(), top=50)
    assert drawn == [f"t{i:03d}" for i in range(79, 29, -1)]  # best first
    assert curve_trials(cands, Policy(), champion="t005", top=50)[-1] == "t005"
    assert len(curve_trials(cands[:10], Policy(), champion="t005")) == 10
