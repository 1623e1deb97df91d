"""Reports on a sweep: leaderboard CSV, Pareto-front plot, learning curves, parallel coordinates.

Functions take plain data (:class:`~tracking.selection.Candidate` records, metric histories) and
write files; the registry/store adapter logs them as artifacts of the parent run. Plots use
matplotlib's Agg backend (no display needed), imported only when a plot is drawn.

Example:
    >>> from tracking.selection import Candidate, Policy
    >>> rows = leaderboard_rows([Candidate("t1", {"test_accuracy": 0.9})], Policy())
    >>> rows[0]["rank"], rows[0]["pareto"]
    (1, True)
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tracking import keys
from tracking.selection import Candidate, Policy, mark_candidates, rejection

# X axes the Pareto plot tries, in order: latency when a recipe measured it, else size.
PARETO_X = (keys.LATENCY_MS_P50, keys.MODEL_SIZE_BYTES, keys.PARAM_COUNT)
# Learning curves of this many trials, best first: more lines are unreadable, and each costs a
# metric-history query at the end of the sweep.
CURVES_TOP = 50


def leaderboard_rows(
    candidates: Sequence[Candidate], policy: Policy, champion: str | None = None
) -> list[dict[str, Any]]:
    """One dict per trial, best first: rank (eligible only), marks, metrics, then config.

    ``pareto`` marks the Pareto-optimal eligible trials; ``excluded`` says why a trial cannot win
    (the constraint it breaks, ``trial stopped``, ``val_loss is nan``...); ``champion`` marks the
    trial whose id is ``champion``.
    """
    marks = mark_candidates(list(candidates), policy)
    objectives = policy.objectives

    def order(c: Candidate) -> tuple:
        if marks[c.trial_id].excluded:
            return (1, 0.0, c.trial_id)
        return (0, *(-o.signed(c.metrics[o.metric]) for o in objectives), c.trial_id)

    rows, rank = [], 0
    for c in sorted(candidates, key=order):
        mark = marks[c.trial_id]
        rank += mark.excluded is None
        rows.append(
            {
                "rank": rank if mark.excluded is None else "",
                "trial_id": c.trial_id,
                "status": c.status,
                "champion": c.trial_id == champion,
                "pareto": mark.pareto,
                "excluded": mark.excluded or "",
                **{k: v for k, v in sorted(c.metrics.items())},
                **{f"config.{k}": v for k, v in sorted(_flatten(c.config).items())},
                "run_id": c.run_id or "",
            }
        )
    return rows


def curve_trials(
    candidates: Sequence[Candidate],
    policy: Policy,
    champion: str | None = None,
    top: int = CURVES_TOP,
) -> list[str]:
    """The trials whose learning curves are drawn: the ``top`` best in leaderboard order, and
    the champion wherever it ranks."""
    ranked = [r["trial_id"] for r in leaderboard_rows(candidates, policy)]
    chosen = ranked[:top]
    if champion is not None and champion in ranked and champion not in chosen:
        chosen.append(champion)
    return chosen


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_leaderboard_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`leaderboard_rows` output as CSV (columns: the union, in first-seen order)."""
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def warm_up() -> None:
    """Import matplotlib and draw one empty figure (fonts, Agg): a second or two, paid while a
    sweep runs instead of after it."""

    _pyplot()
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(io.BytesIO(), format="png")


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RuntimeError("plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(
    candidates: Sequence[Candidate],
    policy: Policy,
    path: str | Path,
    champion: str | None = None,
    y: str = keys.TEST_ACCURACY,
    x: str | None = None,
) -> Path | None:
    """Accuracy against latency (or size), marker area from model size, front joined, champion
    starred, infeasible trials as grey crosses. Returns None when no trial has ``y`` and an x.

    The front drawn is the 2-D front of the plotted axes among eligible trials (``y`` max, ``x``
    min), which is what a reader checks by eye.
    """
    pts = [c for c in candidates if _finite(c.metrics.get(y))]
    x = x or next((m for m in PARETO_X if any(_finite(c.metrics.get(m)) for c in pts)), None)
    pts = [c for c in pts if x and _finite(c.metrics.get(x))]
    if not pts or x is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    sizes = [c.metrics.get(keys.MODEL_SIZE_BYTES, math.nan) for c in pts]
    known = [s for s in sizes if _finite(s)]
    smax = max(known) if known else 1.0
    area = [30 + 400 * (s / smax) if _finite(s) else 40 for s in sizes]
    cons = policy.parsed_constraints()
    ok = [rejection(c, policy, cons) is None for c in pts]
    for flag, label, style in (
        (True, "eligible", {"c": "tab:blue", "alpha": 0.6}),
        (False, "excluded (constraint, failed, stopped)", {"c": "0.6", "marker": "x"}),
    ):
        sel = [i for i, o in enumerate(ok) if o == flag]
        if sel:
            ax.scatter(
                [pts[i].metrics[x] for i in sel],
                [pts[i].metrics[y] for i in sel],
                s=[area[i] for i in sel],
                label=label,
                **style,
            )
    higher = _mode_of(policy, y) == "max"
    front = _front_2d([p for p, o in zip(pts, ok, strict=True) if o], x, y, higher)
    if front:
        ax.step(
            [c.metrics[x] for c in front],
            [c.metrics[y] for c in front],
            where="post",
            c="tab:orange",
            lw=1.5,
            label="Pareto front",
        )
    champ = next((c for c in pts if c.trial_id == champion), None)
    if champ:
        ax.scatter(
            [champ.metrics[x]],
            [champ.metrics[y]],
            marker="*",
            s=500,
            c="gold",
            edgecolors="black",
            zorder=5,
            label=f"champion {champ.trial_id}",
        )
    for c in cons:
        if c.metric == x:
            ax.axvline(c.value, ls="--", c="tab:red", lw=1, label=c.text)
        elif c.metric == y:
            ax.axhline(c.value, ls="--", c="tab:red", lw=1, label=c.text)
    ax.set_xlabel(x + (" (lower is better)" if x != y else ""))
    ax.set_ylabel(y + ("" if higher else " (lower is better)"))
    ax.set_title(f"{y} vs {x} (marker area: {keys.MODEL_SIZE_BYTES})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, plt, path)


def _front_2d(pts: Sequence[Candidate], x: str, y: str, higher_y: bool = True) -> list[Candidate]:
    """Points no other point beats on both axes (x lower, y higher or, with ``higher_y`` off,
    lower), sorted by x."""
    sign = 1.0 if higher_y else -1.0
    out: list[Candidate] = []
    for c in sorted(pts, key=lambda c: (c.metrics[x], -sign * c.metrics[y])):
        if not out or sign * c.metrics[y] > sign * out[-1].metrics[y]:
            out.append(c)
    return out


def _mode_of(policy: Policy, metric: str) -> str:
    """``metric``'s mode in the policy's objectives (max for a metric it does not rank by)."""
    return next((o.mode for o in policy.objectives if o.metric == metric), "max")


def headline_metric(policy: Policy) -> str:
    """The metric the reports plot first: the policy's first objective."""
    return policy.objectives[0].metric


def plot_learning_curves(
    histories: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    metric: str = keys.VAL_ACCURACY,
    champion: str | None = None,
    total: int | None = None,
) -> Path | None:
    """One line per trial of ``metric`` by epoch; the champion thick, the rest thin.

    Args:
        histories: trial id -> [(epoch, value), ...] as logged (``step = epoch``).
        total: the sweep's number of trials, when ``histories`` holds only the best of them.
    """
    series = {t: sorted(h) for t, h in histories.items() if h}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for tid, h in sorted(series.items()):
        is_champ = tid == champion
        ax.plot(
            [e for e, _ in h],
            [v for _, v in h],
            lw=2.5 if is_champ else 1,
            alpha=1.0 if is_champ else 0.55,
            c="tab:red" if is_champ else None,
            label=f"champion {tid}" if is_champ else None,
            zorder=3 if is_champ else 2,
        )
    ax.set_xlabel(keys.EPOCH)
    ax.set_ylabel(metric)
    shown = f"the best {len(series)} of {total}" if total and total > len(series) else len(series)
    ax.set_title(f"{metric} per epoch, {shown} trials (stopped trials end early)")
    ax.grid(alpha=0.3)
    if champion in series:
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_parallel_coordinates(
    candidates: Sequence[Candidate],
    path: str | Path,
    color: str = keys.TEST_ACCURACY,
    champion: str | None = None,
    max_axes: int = 8,
) -> Path | None:
    """Each trial a line across its numeric config values and ``color``, axes scaled to [0, 1];
    colour is ``color``'s value. Categorical values get evenly spaced positions."""
    rows = [(c, _flatten(c.config)) for c in candidates if _finite(c.metrics.get(color))]
    if not rows:
        return None
    names = [
        k
        for k in sorted({k for _, cfg in rows for k in cfg})
        if len({repr(cfg.get(k)) for _, cfg in rows}) > 1
    ][: max_axes - 1]
    cols = [[cfg.get(k) for _, cfg in rows] for k in names] + [[c.metrics[color] for c, _ in rows]]
    names.append(color)
    scaled = [_scale(col) for col in cols]
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4.5), dpi=110)
    cmap = plt.get_cmap("viridis")
    cvals = scaled[-1]
    xs = range(len(names))
    lines, colors = [], []
    for i, (c, _) in enumerate(rows):
        ys = [col[i] for col in scaled]
        if c.trial_id == champion:
            ax.plot(xs, ys, c="tab:red", lw=3, zorder=5, label=f"champion {c.trial_id}")
        else:
            lines.append(list(zip(xs, ys, strict=True)))
            colors.append(cmap(cvals[i]))
    # One artist for all the other trials: thousands of separate lines cost ~10 KB and ~2 ms
    # each to build and draw.
    ax.add_collection(LineCollection(lines, colors=colors, linewidths=1.2, alpha=0.8))
    ax.set_xlim(-0.2, len(names) - 0.8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8, rotation=15)
    ax.set_yticks([])
    for i in range(len(names)):
        ax.axvline(i, c="0.3", lw=0.8)
    ax.set_title(f"configs by {color} (yellow = high); each axis scaled to its range")
    if champion and any(c.trial_id == champion for c, _ in rows):
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _scale(col: list[Any]) -> list[float]:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in col):
        lo, hi = min(col), max(col)
        return [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in col]
    levels = sorted({repr(v) for v in col})
    pos = {lv: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, lv in enumerate(levels)}
    return [pos[repr(v)] for v in col]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(
    candidates: Sequence[Candidate],
    policy: Policy,
    folder: str | Path,
    histories: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    champion: str | None = None,
    curve_metric: str = keys.VAL_ACCURACY,
) -> list[Path]:
    """Every report into ``folder``: what the adapter logs on the parent run (learning curves
    of ``curve_metric`` for the trials in ``histories``; the Pareto plot's y axis and the
    parallel plot's colour are the policy's first objective)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path | None] = [
        write_leaderboard_csv(
            leaderboard_rows(candidates, policy, champion), folder / keys.LEADERBOARD_ARTIFACT
        )
    ]
    y = headline_metric(policy)
    out.append(plot_pareto(candidates, policy, folder / keys.PARETO_PLOT_ARTIFACT, champion, y=y))
    out.append(
        plot_parallel_coordinates(
            candidates, folder / keys.PARALLEL_PLOT_ARTIFACT, color=y, champion=champion
        )
    )
    if histories:
        out.append(
            plot_learning_curves(
                histories,
                folder / keys.CURVES_PLOT_ARTIFACT,
                metric=curve_metric,
                champion=champion,
                total=len(candidates),
            )
        )
    return [p for p in out if p is not None]


def publish_reports(
    client: Any,
    parent_run_id: str,
    candidates: Sequence[Candidate],
    policy: Policy,
    champion: str | None = None,
    curve_metric: str = keys.VAL_ACCURACY,
) -> list[str]:
    """Write every report and log it on the sweep's parent run (``client``: an MlflowClient).

    Learning curves come from the ``curve_metric`` history (the sweep's ``search.metric``) of
    the best trials' runs (:func:`curve_trials`). Returns the artifact names logged.
    """

    drawn = set(curve_trials(candidates, policy, champion))
    histories = {
        c.trial_id: [(m.step, m.value) for m in client.get_metric_history(c.run_id, curve_metric)]
        for c in candidates
        if c.run_id and c.trial_id in drawn
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_reports(candidates, policy, tmp, histories, champion, curve_metric)
        for p in paths:
            client.log_artifact(parent_run_id, str(p))
    return [p.name for p in paths]
