"""The optimizer catalogue as data (``podium optimizers``) and as ``docs/OPTIMIZERS.md``.

Both come from the registries, so the docs cannot drift from the code: a test regenerates the
Markdown and compares it with the committed file. Regenerate with::

    python -c "from workers.optimizers import render_markdown as r; print(r(), end='')" \\
        > docs/OPTIMIZERS.md
"""

from __future__ import annotations

from typing import Any

from workers.optimizers._base import LR, OPTIMIZERS, HParam


def _hparam_row(name: str, h: HParam) -> dict[str, Any]:
    kind = {float: "float", int: "int", bool: "bool", str: "str", tuple: "pair of floats"}[h.kind]
    return {
        "name": name,
        "default": h.default,
        "type": kind,
        "low": h.low,
        "high": h.high,
        "choices": list(h.choices),
        "doc": h.doc,
    }


def describe() -> list[dict[str, Any]]:
    """Every registered optimizer with its hyperparameters, defaults and ranges, sorted by name.

    Example:
        >>> cg = next(o for o in describe() if o["name"] == "cg")
        >>> cg["batch_mode"], cg["needs_closure"], cg["hparams"][0]["name"]
        ('full', True, 'lr')
    """
    out = []
    for name in OPTIMIZERS.names():
        e = OPTIMIZERS.get(name)
        lr = {**_hparam_row("lr", LR), "default": e.lr_default}
        out.append(
            {
                "name": name,
                "doc": e.doc,
                "batch_mode": e.batch_mode,
                "needs_closure": e.needs_closure,
                "min_max": e.min_max,
                "hparams": [lr, *(_hparam_row(k, h) for k, h in sorted(e.hparams.items()))],
            }
        )
    return out


def _range(row: dict[str, Any]) -> str:
    if row["choices"]:
        return " \\| ".join(row["choices"])
    if row["type"] == "bool":
        return "true \\| false"
    low = "-inf" if row["low"] is None else f"{row['low']:g}"
    high = "inf" if row["high"] is None else f"{row['high']:g}"
    return f"[{low}, {high}]"


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| key | default | range | what |", "|---|---|---|---|"]
    lines += [
        f"| `{r['name']}` | {_default(r['default'])} | {_range(r)} | {r['doc']} |" for r in rows
    ]
    return lines


def render_markdown() -> str:
    """``docs/OPTIMIZERS.md``: every optimizer, lr schedule and adversarial-training key."""
    from workers.optimizers.schedules import SCHEDULE_DOCS, SCHEDULE_KEYS
    from workers.trial.adversarial import ADVERSARIAL_KEYS

    lines = [
        "# Optimizers",
        "",
        "Generated from the registries by `workers.optimizers.render_markdown()`; "
        "`podium optimizers` prints the same catalogue. Set `optimizer.name` and any of the "
        "optimizer's keys in a spec; each key may be a search space. A key the optimizer does "
        "not take fails validation with the keys it does take.",
        "",
        "Batch mode: `minibatch` uses `training.batch_size` (default 64); `full` takes one "
        "optimizer step per epoch on the whole training set; `single` defaults the batch size "
        "to 1. *closure*: the optimizer re-evaluates the loss within a step. *min-max*: a "
        "zero-sum-game method (mark the maximising player's param group with "
        '`"maximize": True`, or use `workers.optimizers.game_optimizer`).',
    ]
    for o in describe():
        flags = [f"batch mode `{o['batch_mode']}`"]
        flags += ["closure"] if o["needs_closure"] else []
        flags += ["min-max"] if o["min_max"] else []
        lines += ["", f"## `{o['name']}`", "", f"{o['doc']} ({', '.join(flags)}).", ""]
        lines += _table(o["hparams"])
    lines += [
        "",
        "# Learning-rate schedules (`training.lr_schedule`)",
        "",
        "The value is the multiplier of `optimizer.lr` at each optimizer step; "
        "`workers/optimizers/schedules.py` gives the formulas.",
    ]
    for name, keys in SCHEDULE_KEYS.items():
        rows = [_hparam_row(k, h) for k, h in sorted(keys.items())]
        lines += ["", f"## `{name}`", "", SCHEDULE_DOCS[name] + ".", ""] + _table(rows)
    lines += [
        "",
        "# Adversarial training (`training.adversarial`)",
        "",
        "Two-player zero-sum training: the model minimises the loss on inputs a bounded "
        "adversary (FGSM or PGD in an L-inf ball) perturbs to maximise it. Trials then "
        "report "
        "`robust_accuracy`, the test accuracy under PGD at `eval_epsilon`.",
        "",
    ]
    lines += _table([_hparam_row(k, h) for k, h in ADVERSARIAL_KEYS.items()])
    return "\n".join(lines) + "\n"
