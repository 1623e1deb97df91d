"""``podium``: a thin command line over :mod:`orchestrator.api`.

Exit codes: 0 success, 1 the run failed, 2 usage or spec errors.

    podium run [SPEC] [--set PATH=VALUE]... [--tracking-uri URI] [--address ADDR]
               [--resume | --more N]
    podium validate SPEC [--set PATH=VALUE]...
    podium leaderboard EXPERIMENT [--top N]
    podium ui [--port 5000]
    podium promote EXPERIMENT [--policy FILE]
    podium rollback MODEL
    podium serve models:/<name>@champion [--port 5001]
    podium optimizers [NAME]... [--json | --markdown]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from orchestrator.errors import PodiumError, SpecError, StorageFailure
from tracking.errors import UntrustedModelError

USAGE_ERROR = 2


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run an experiment (no SPEC: the built-in digits example)")
    p.add_argument("spec", nargs="?", help="YAML experiment spec")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec value, e.g. --set search.num_samples=4 (repeatable)",
    )
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (beats MLFLOW_TRACKING_URI and the spec)"
    )
    p.add_argument("--address", help="Ray cluster to join: auto, ray://host:port or host:port")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="finish the interrupted sweep of this spec"
    )
    again.add_argument(
        "--more",
        type=_positive,
        default=0,
        metavar="N",
        help="extend the finished sweep of this spec by N trials (same parent run; a "
        "model-based searcher is seeded with its trials) and choose among all of them",
    )
    p.add_argument("--top", type=int, default=10, help="leaderboard rows to print at the end")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print only the final summary")
    loud.add_argument("-v", "--verbose", action="store_true", help="a line per result, worker logs")
    p.set_defaults(func=cmd_run)


def _add_validate(sub: Any) -> None:
    p = sub.add_parser("validate", help="check a spec and print it resolved with defaults")
    p.add_argument("spec", help="YAML experiment spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    p.set_defaults(func=cmd_validate)


def _add_schema(sub: Any) -> None:
    p = sub.add_parser(
        "schema", help="print the spec's JSON Schema (for editors: the YAML language server)"
    )
    p.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from orchestrator.spec.schema import spec_schema

    print(json.dumps(spec_schema(), indent=2))
    return 0


def _add_leaderboard(sub: Any) -> None:
    p = sub.add_parser("leaderboard", help="the newest sweep's trials, best first")
    p.add_argument("experiment")
    p.add_argument("--tracking-uri")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_leaderboard)


def _add_ui(sub: Any) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the local store")
    p.add_argument("--tracking-uri")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_ui)


def _add_optimizers(sub: Any) -> None:
    p = sub.add_parser(
        "optimizers", help="the optimizer catalogue: names, hyperparameters, defaults and ranges"
    )
    p.add_argument("names", nargs="*", help="only these optimizers (default: all)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable")
    fmt.add_argument(
        "--markdown",
        action="store_true",
        help="docs/OPTIMIZERS.md: every optimizer, lr schedule and adversarial key",
    )
    p.set_defaults(func=cmd_optimizers)


# Each subcommand registers itself here; later features add theirs to this list.
SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_run,
    _add_validate,
    _add_leaderboard,
    _add_ui,
    _add_optimizers,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podium",
        description="Distributed experiment "
        "orchestration: Ray Tune sweeps, MLflow tracking, registry promotion.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


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
    import shlex

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
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_optimizers(args: argparse.Namespace) -> int:
    import json

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


# ------------------------------------------------------------------ promote, rollback, serve


def _add_promote(sub: Any) -> None:
    p = sub.add_parser(
        "promote",
        help="re-decide a sweep's winner from its logged runs and "
        "promote it if it beats the champion",
    )
    p.add_argument("experiment")
    p.add_argument(
        "--policy",
        help="YAML file of promotion keys (objectives, constraints, "
        "strategy, pick, weights, min_improvement); default: the sweep's own",
    )
    p.add_argument("--tracking-uri")
    p.set_defaults(func=cmd_promote)


def _add_rollback(sub: Any) -> None:
    p = sub.add_parser("rollback", help="swap @champion and @previous of a registered model")
    p.add_argument("model")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=cmd_rollback)


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a registered model over HTTP (MLflow scoring "
        "protocol: POST /invocations, GET /ping); ONNX or weights-only only",
    )
    p.add_argument(
        "model_uri", help="models:/<name>@champion, models:/<name>/<version> or a folder"
    )
    p.add_argument("--port", type=int, default=5001, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tracking-uri")
    p.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module whose architectures a state-dict version may name (repeatable); by "
        "default only built-in architectures are rebuilt, and an ONNX version needs none",
    )
    p.add_argument(
        "--replicas",
        type=_positive,
        default=0,
        metavar="N",
        help="serve on N Ray Serve replicas behind Ray's HTTP proxy (a local Ray, or --address)",
    )
    p.add_argument("--address", help="the Ray cluster for --replicas (default: a local Ray)")
    p.add_argument(
        "--model-inputs",
        action="store_true",
        help="serve the model alone: requests send model inputs (preprocessed tensors) and get "
        "logits, instead of raw inputs in and a label and probabilities out",
    )
    p.set_defaults(func=cmd_serve)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


SUBCOMMANDS.extend([_add_promote, _add_rollback, _add_serve, _add_schema])


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


def _quiet_libraries(verbose: bool) -> None:
    """MLflow's store-migration notices and download progress bars are noise on a terminal."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not verbose:
        # Against an mlflow server, MLflow prints "View run … at: URL" on stdout as each run
        # ends and logs "Waiting up to 300 seconds …" as a version registers: they broke into
        # the progress view. In the environment, so MLflow's own set-up at import (which
        # resets its logger's level) and Ray's local workers honour it too.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        for name in _FAULT_LOGGERS:
            logging.getLogger(name).addFilter(_said_by_podium)


# Where MLflow and Tune log a full disk with a traceback: Podium ends the sweep on it with one
# line of its own (orchestrator.execution.fail_fast), so theirs show with --verbose only.
_FAULT_LOGGERS = (
    "mlflow.store.db.utils",
    "ray.tune.execution.experiment_state",
    "ray.tune.execution.tune_controller",
)


def _said_by_podium(record: logging.LogRecord) -> bool:
    from tracking.faults import storage_fault

    error = record.exc_info[1] if record.exc_info else None
    return storage_fault(error or record.getMessage()) is None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    _quiet_libraries(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except SpecError as e:
        print(f"podium: {e}", file=sys.stderr)
        return USAGE_ERROR
    except (PodiumError, UntrustedModelError) as e:
        print(f"podium: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("podium: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``podium`` console script: :func:`main`, then a quick exit with its code.

    After a sweep, the interpreter's own teardown (freeing the torch, Ray Tune and MLflow modules
    and their native state) took 1.5-3 s here, longer than some whole commands. By the time
    ``main`` returns, Podium has closed everything it wrote (the MLflow writer is flushed, the
    parent run ended, Ray shut down), so the registered exit handlers run, the streams are
    flushed, and the process ends without the teardown.
    """
    import atexit
    import logging
    import os

    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
