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
import atexit
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.commands import (
    USAGE_ERROR,
    cmd_leaderboard,
    cmd_optimizers,
    cmd_promote,
    cmd_rollback,
    cmd_run,
    cmd_schema,
    cmd_serve,
    cmd_ui,
    cmd_validate,
)
from orchestrator.errors import PodiumError, SpecError
from tracking.errors import UntrustedModelError


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


def _quiet_libraries(verbose: bool) -> None:
    """MLflow's store-migration notices and download progress bars are noise on a terminal."""

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

    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
