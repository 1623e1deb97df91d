"""Text to token ids, in Python (training) and the same ids in the served graph
(:mod:`workers.text_graph` reproduces :func:`encode`): lowercased, split by ``TOKEN_PATTERN``,
mapped through a vocabulary built on the training split (0 = padding, 1 = unknown), cut or padded
to ``max_len``."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

TOKENIZER = "lowercase-regex"


TOKEN_PATTERN = r"[a-z0-9]+(?:'[a-z0-9]+)*|[!?]"


PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1


MIN_FREQ = 2  # a token seen once in training teaches nothing the unknown id does not


MAX_VOCAB = 10_000  # ~9,200 training tokens pass MIN_FREQ: the cap binds only on a bigger corpus


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
