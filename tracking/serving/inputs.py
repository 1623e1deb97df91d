"""A scoring request's inputs, checked against what the model takes: MLflow's JSON forms
(``inputs``, ``instances``, ``dataframe_split``, ``dataframe_records``), raw uint8 pixels, review
strings; each bad form is a :class:`~tracking.serving.scorers.ServeError` that names it (a 400)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tracking.serving.scorers import Scorer

MAX_BODY_BYTES = 64 * 1024 * 1024  # refuse bigger requests before reading them


def parse_inputs(
    payload: Any,
    input_shape: tuple[int, ...] | None,
    name: str = "inputs",
    dtype: Any = np.float32,
) -> np.ndarray:
    """A batch of ``dtype`` from an MLflow scoring request body (already JSON-decoded): numbers
    (float32 or float64 columns; uint8 pixels, checked to be whole numbers 0..255) or, for a
    text pipeline (``object``), one string per example.

    Accepts ``inputs`` / ``instances`` (lists of examples, flat or shaped) and ``dataframe_split``
    / ``dataframe_records`` (one flat row per example). Flat rows are reshaped to ``input_shape``.

    Raises:
        ValueError: the body has none of the keys, or the values are not a numeric batch.
    """
    if not isinstance(payload, dict):
        raise ValueError('the body must be a JSON object such as {"inputs": [[...], ...]}')
    if "inputs" in payload or "instances" in payload:
        rows = payload.get("inputs", payload.get("instances"))
    elif "dataframe_split" in payload:
        rows = (payload["dataframe_split"] or {}).get("data")
    elif "dataframe_records" in payload:
        recs = payload["dataframe_records"]
        rows = [list(r.values()) if isinstance(r, dict) else r for r in recs or []]
    else:
        raise ValueError(
            "expected one of: inputs, instances, dataframe_split, dataframe_records; "
            f"got keys {sorted(payload)}"
        )
    if dtype is np.object_:
        return _strings(rows, name)
    try:
        x = np.asarray(rows, dtype=np.float64 if dtype is not np.float32 else np.float32)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} must be a rectangular list of numbers: {e}") from None
    if dtype is np.uint8:
        x = _pixels(x, name)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example")
    if x.ndim == 1 and input_shape != ():  # () : one number per example (a category id)
        x = x[None, :]
    if input_shape is not None and x.shape[1:] != input_shape:
        per = int(np.prod(input_shape))
        if x[0].size != per:
            raise ValueError(
                f"each example of {name} must have {per} values (shape {list(input_shape)}), "
                f"got shape {list(x.shape[1:])}"
            )
        x = x.reshape((x.shape[0], *input_shape))
    return np.ascontiguousarray(x)


def _strings(rows: Any, name: str) -> np.ndarray:
    """One string per example (a text pipeline's input)."""
    if isinstance(rows, str):
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        raise ValueError(f'{name} must be a list of strings, e.g. {{"inputs": ["a review"]}}')
    # A one-column DataFrame's rows (dataframe_split, dataframe_records) are [text] each.
    rows = [r[0] if isinstance(r, list) and len(r) == 1 else r for r in rows]
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(row).__name__}")
    return np.asarray(rows, dtype=object)


def _pixels(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 pixels: whole numbers 0..255, refused by position otherwise (never wrapped)."""
    bad = ~np.isfinite(x) | (x < 0) | (x > 255) | (x != np.round(x))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must hold pixels as whole numbers 0..255 (uint8); got {x[where]} at "
            f"{list(where)}"
        )
    return x.astype(np.uint8)


def parse_request(payload: Any, scorer: Scorer) -> np.ndarray | dict[str, np.ndarray]:
    """The batch a request body holds for ``scorer``: an array for a one-input model (see
    :func:`parse_inputs`), ``{name: array}`` for a model of several inputs, sent by name as
    ``{"inputs": {"input_0": [...], "input_1": [...]}}`` (MLflow's named-tensor form).

    Raises:
        ValueError: an input is missing, unknown or malformed, or their row counts differ.
    """
    names = scorer.input_names
    dtypes = getattr(scorer, "input_dtypes", None) or [np.float32] * len(names)
    if len(names) == 1:
        return parse_inputs(payload, scorer.input_shape, dtype=dtypes[0])
    named = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(named, dict):
        raise ValueError(
            f"this model takes {len(names)} inputs by name: send "
            '{"inputs": {' + ", ".join(f'"{n}": [...]' for n in names) + "}}"
        )
    missing, unknown = sorted(set(names) - set(named)), sorted(set(named) - set(names))
    if missing or unknown:
        raise ValueError(f"inputs must be exactly {names}; missing {missing}, unknown {unknown}")
    out = {
        n: parse_inputs({"inputs": named[n]}, shape, n, dtype)
        for n, shape, dtype in zip(names, scorer.input_shapes, dtypes, strict=True)
    }
    counts = {n: len(a) for n, a in out.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"every input needs one row per example; got rows {counts}")
    return out
