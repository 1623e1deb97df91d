"""What each ``podium`` command does once its arguments are parsed (:mod:`orchestrator.cli` parses
them): a thin layer over :mod:`orchestrator.api` that prints for a terminal and returns the exit
code."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from orchestrator.errors import StorageFailure

USAGE_ERROR = 2  # bad arguments or a bad spec


def cmd_schema(args: argparse.Namespace) -> int:

    from orchestrator.spec.schema import spec_schema

    print(json.dumps(spec_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator import api

    spec = api.validate(args.spec, args.overrides)
    _print_warnings(spec)
    verbosity = 0 if args.quiet else 2 if args.verbose else 1
    if verbosity:
        print(
            f"podium: running {spec.name!r} ({args.more or spec.search.num_samples} "
            f"{'more ' if args.more else ''}samples, "
            f"scheduler {spec.search.scheduler}, searcher {spec.search.searcher})",
            file=sys.stderr,
        )
    try:
        result = api.run(
            spec,
            tracking_uri=args.tracking_uri,
            address=args.address,
            resume=args.resume,
            more=args.more,
            verbosity=verbosity,
        )
    except StorageFailure as e:
        raise e.with_command(_resume_command(args)) from e
    shown = api.headline_metrics(asdict(spec.promotion), spec.search.metric)
    print_rows(
        result.rows[: args.top] if args.top else result.rows,
        sort=True,
        metrics=shown,
        rank=api.rank_by(*result.extra["ranked_by"]),
    )
    print(f"\ntracking: {result.tracking_uri}  (parent run {result.parent_run_id})")
    if result.promotion and result.decision.winner is not None:
        p = result.promotion
        print(f"winner: trial {result.decision.winner.trial_id} registered as version {p.version}")
        print("  why: " + "; ".join(result.decision.reasons))
        print(
            f"champion: {p.model_uri} = version {p.champion_version} "
            f"({'promoted' if p.promoted else 'kept'}: {'; '.join(p.reasons)})"
        )
    else:
        print("no model promoted: " + "; ".join(result.decision.reasons))
    if result.tracking_failures:
        print(f"note: {result.tracking_failures} MLflow writes were retried", file=sys.stderr)
    if verbosity >= 2 and result.extra.get("timings_s"):
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.extra["timings_s"].items())
        print(f"timings: {phases}", file=sys.stderr)
    if result.extra.get("stopped"):
        print(f"podium: error: the sweep was stopped: {result.extra['stopped']}", file=sys.stderr)
        return 1
    return 0 if result.decision.winner is not None else 1


def _resume_command(args: argparse.Namespace) -> str:
    """This ``podium run`` command line, with ``--resume``: what goes on after a fault."""

    argv, out = list(getattr(args, "argv", None) or sys.argv[1:]), []
    while argv:  # an interrupted --more resumes like any sweep (its new trials are in its state)
        a = argv.pop(0)
        if a == "--more" and argv:
            argv.pop(0)
        elif a != "--resume" and not a.startswith("--more="):
            out.append(a)
    return shlex.join(["podium", *out, "--resume"])


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator import api

    spec = api.validate(args.spec, args.overrides)
    _print_warnings(spec)
    print(f"{args.spec}: valid (spec hash {spec.spec_hash()})")
    print(spec.to_yaml(), end="")
    return 0


def _print_warnings(spec: Any) -> None:
    for line in spec.warnings:
        print(f"podium: warning: {line}", file=sys.stderr)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from orchestrator import api

    rows = api.leaderboard(args.experiment, args.tracking_uri, args.top)
    if not rows:
        print(f"experiment {args.experiment!r} has no trials yet")
        return 0
    print_rows(
        rows,
        sort=False,
        marks=api.leaderboard_marks(args.experiment, args.tracking_uri),
        metrics=api.leaderboard_metrics(args.experiment, args.tracking_uri),
    )
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from orchestrator import api

    proc = api.ui(args.tracking_uri, args.port, args.host)
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI: {base}/#/experiments?{api.TRAINING_VIEW}  (Ctrl-C stops it)")
    for name, url in api.ui_links(base, args.tracking_uri):
        print(f"  {name}: {url}")
    sys.stdout.flush()
    with _sigterm_as_interrupt():
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            api.stop_process_group(proc)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, ``kill``) stops a server command as Ctrl-C does, so its
    cleanup runs and it leaves no child listening."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_optimizers(args: argparse.Namespace) -> int:

    from workers.optimizers import OPTIMIZERS, describe, render_markdown

    if args.markdown:
        print(render_markdown(), end="")
        return 0
    unknown = [n for n in args.names if n not in OPTIMIZERS]
    if unknown:
        print(
            f"podium: optimizers: {', '.join(map(repr, unknown))}: not one of: "
            f"{', '.join(OPTIMIZERS.names())}",
            file=sys.stderr,
        )
        return USAGE_ERROR
    rows = [o for o in describe() if not args.names or o["name"] in args.names]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for o in rows:
        flags = ", ".join(
            [f"batch {o['batch_mode']}"]
            + ["closure"] * o["needs_closure"]
            + ["min-max"] * o["min_max"]
        )
        print(f"{o['name']}  ({flags})\n  {o['doc']}")
        for h in o["hparams"]:
            allowed = (
                " | ".join(h["choices"])
                if h["choices"]
                else (
                    "true | false"
                    if h["type"] == "bool"
                    else f"[{_bound(h['low'], '-inf')}, {_bound(h['high'], 'inf')}]"
                )
            )
            print(f"    {h['name']:<26} {_fmt(h['default']):<14} {allowed:<18} {h['doc']}")
    return 0


def _bound(v: float | None, none: str) -> str:
    return none if v is None else f"{v:g}"


def print_rows(
    rows: Sequence[Any],
    sort: bool,
    marks: dict[str, Any] | None = None,
    metrics: Sequence[str] = (),
    rank: Any = None,
) -> None:
    """A compact table: status, the headline metrics, and the params that differ between trials.

    ``metrics``: the ones the promotion policy and the search use (the leaderboard shows every
    metric the policy ranks or constrains by), then latency and size where trials have them;
    ``rank``: the sort key when ``sort``. With ``marks``
    (:func:`tracking.selection.mark_candidates`): a ``pareto`` column (``*`` on the Pareto front)
    and an ``excluded`` column (the constraint a trial breaks, or why it cannot win).
    """
    from orchestrator.api import _rank
    from tracking import keys

    rows = sorted(rows, key=rank or _rank) if sort else list(rows)
    wanted = dict.fromkeys(
        [*metrics, keys.LATENCY_MS_P50, keys.MODEL_SIZE_BYTES]
        if metrics
        else [keys.TEST_ACCURACY, keys.VAL_ACCURACY, keys.LATENCY_MS_P50, keys.MODEL_SIZE_BYTES]
    )
    metrics = [m for m in wanted if any(m in r.metrics for r in rows)]
    varying = sorted(
        k
        for k in {k for r in rows for k in r.params}
        if len({str(r.params.get(k)) for r in rows}) > 1
    )
    header = ["trial", "status", *metrics, *varying]
    table = [header] + [
        [
            r.trial_id,
            r.status,
            *(_fmt(r.metrics.get(m)) for m in metrics),
            *(_fmt(r.params.get(k)) for k in varying),
        ]
        for r in rows
    ]
    if marks:
        table[0] += ["pareto", "excluded"]
        for row, r in zip(table[1:], rows, strict=True):
            m = marks.get(r.trial_id)
            row += ["*" if m and m.pareto else "", (m.excluded or "") if m else ""]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v[:24]
        return f"{f:.4g}" if "." in v or "e" in v else v
    return str(v)[:24]


def cmd_promote(args: argparse.Namespace) -> int:
    from orchestrator import api

    p = api.promote(args.experiment, args.policy, args.tracking_uri)
    moved = "promoted to" if p.promoted else "not promoted,"
    print(
        f"{p.model_name}: trial run {p.run_id} is version {p.version}; "
        f"{moved} @{p.alias} = version {p.champion_version}"
    )
    print("  why: " + "; ".join(p.reasons))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from orchestrator import api

    champion, previous = api.rollback(args.model, args.tracking_uri)
    print(f"{args.model}: @champion = version {champion}, @previous = version {previous}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator import api

    with _sigterm_as_interrupt():
        try:
            api.serve(
                args.model_uri,
                args.port,
                args.host,
                args.tracking_uri,
                plugins=args.plugins,
                replicas=args.replicas,
                address=args.address,
                model_inputs=args.model_inputs,
            )
        except KeyboardInterrupt:
            pass
    return 0
