"""Text classifiers over token ids: ``embedding_bag``, ``fasttext``, ``textcnn`` and ``lstm``.

Each maps ``(batch, max_len)`` int64 token ids (0 = padding, as the ``rotten-tomatoes`` task
encodes them) to ``(batch, num_classes)`` logits. ``vocab_size`` is not a spec setting: the task
knows it, and ``build_model`` fills it from the task's ``extra``. The other keyword arguments are
the spec ``model`` section's, searchable like any other::

    model: {arch: textcnn, dim: 128, kernel_sizes: [3, 4, 5], filters: 100, dropout: 0.5}

Every model ends in the same head as ``mlp`` and ``cnn``, so the shared knobs mean the same
everywhere: ``hidden`` (widths of ``Linear → [BatchNorm] → ReLU → [Dropout]`` blocks between the
pooled features and the logits; none by default), ``batch_norm`` and ``dropout`` (also applied to
the pooled features, where text models need it most).

All four export to ONNX with int64 inputs through the fast TorchScript-based exporter
(``Gather`` for the embedding table, which ONNX Runtime's int8 quantizes like a weight).

Example:
    >>> import torch
    >>> model = embedding_bag((36,), 2, vocab_size=100, dim=8)
    >>> model(torch.randint(0, 100, (4, 36))).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from workers.models.catalogue import MODELS

PAD_ID = 0  # the id the task pads with; it never counts as a token
# Embeddings start at N(0, 0.1^2), not nn.Embedding's N(0, 1): on rotten-tomatoes (seed 0, Adam)
# textcnn reached 0.775 validation accuracy in 3 epochs from it against 0.669 in 4 from N(0, 1),
# and embedding_bag 0.786 against 0.708 (0.3 was in between for both). Unit-variance vectors
# of rare words are noise that Adam's small steps take many epochs to wash out.
EMBED_INIT_STD = 0.1


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
    with torch.no_grad():
        embed.weight.normal_(0.0, EMBED_INIT_STD)
        embed.weight[PAD_ID].zero_()  # the padding row stays zero (and gets no gradient)
    return embed


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``(batch, length, dim)`` over the positions where ``keep`` ``(batch,
    length)`` is true; an all-padding row gives zeros."""
    weights = keep.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def drop_tokens(ids: torch.Tensor, p: float) -> torch.Tensor:
    """Word dropout (Iyyer et al. 2015): each token id becomes padding with probability ``p``,
    so the bag is pooled over the tokens left. Bag models apply it in training only."""
    if p <= 0:
        return ids
    return ids.masked_fill(torch.rand(ids.shape, device=ids.device) < p, PAD_ID)


def _check_token_dropout(p: float) -> float:
    if not 0 <= p < 1:
        raise ValueError(f"model.token_dropout must be in [0, 1), got {p}")
    return float(p)


def _head(
    n_in: int, hidden: Sequence[int], num_classes: int, batch_norm: bool, dropout: float
) -> nn.Sequential:
    """Dropout on the pooled features, then ``Linear → [BatchNorm] → ReLU → [Dropout]`` per
    hidden width, then the logits: the same blocks as ``mlp``."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    for width in hidden:
        layers.append(nn.Linear(n_in, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = width
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)


def _max_len(arch: str, input_shape: Sequence[int]) -> int:
    if len(input_shape) != 1:
        raise ValueError(
            f"model.arch {arch!r} needs token ids of shape (max_len,), got {tuple(input_shape)}"
        )
    return int(input_shape[0])


class BagOfEmbeddings(nn.Module):
    """The mean of the non-padding tokens' embeddings, then the head (fastText-like).

    ``nn.EmbeddingBag(mode="mean", padding_idx=0)`` computes the same mean, but neither ONNX
    exporter gives a plain graph for it: the TorchScript-based one refuses ``padding_idx`` and
    the dynamo one writes a ``Loop`` over the bags (slower per example, and a table inside a
    loop body is out of reach of ONNX Runtime's quantizer). An ``nn.Embedding`` lookup and a
    masked mean export as ``Gather``, ``Mul``, ``ReduceSum``, ``Div``.
    """

    def __init__(
        self, embed: nn.Embedding, head: nn.Sequential, token_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embed, self.head, self.token_dropout = embed, head, token_dropout

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training:
            ids = drop_tokens(ids, self.token_dropout)
        return self.head(masked_mean(self.embed(ids), ids != PAD_ID))


@MODELS.register("embedding_bag")
def embedding_bag(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int,
    dim: int = 64,
    hidden: Sequence[int] = (),
    batch_norm: bool = False,
    dropout: float = 0.0,
    token_dropout: float = 0.0,
) -> nn.Module:
    """Embedding (``dim``) → mean over the non-padding tokens → head → logits; in training each
    token is dropped with probability ``token_dropout`` (``drop_tokens``)."""
    _max_len("embedding_bag", input_shape)
    embed = _embedding(vocab_size, dim)
    head = _head(dim, hidden, num_classes, batch_norm, dropout)
    return BagOfEmbeddings(embed, head, _check_token_dropout(token_dropout))


# Bigram hashing: (first * BIGRAM_HASH_MULT + second) mod buckets. Knuth's multiplicative-hash
# prime (~0.618 * 2^32): its residue mod any bucket count a person would pick (10,000, 2^15, ...) is
# large and coprime to it, so the pairs of one first token spread over all buckets. (1,000,003 did
# not: it is 3 mod 20,000 and mod 200,000, which made the hash 3a + b and folded ~82,000 distinct
# training bigrams into ~20,000 rows whatever the bucket count.) The product fits int64 for ids
# < 2^31.
BIGRAM_HASH_MULT = 2_654_435_761


class BagOfNgrams(nn.Module):
    """fastText (Joulin et al. 2017): a text's token embeddings and its hashed bigrams'
    embeddings, pooled, then the head.

    One table holds both: rows ``[0, vocab_size)`` the tokens (the task's ids), rows ``[vocab_size,
    vocab_size + buckets)`` the bigrams, a pair of adjacent ids ``(a, b)`` hashed to
    ``vocab_size + (a * BIGRAM_HASH_MULT + b) mod buckets``. A pair that touches padding maps to
    ``PAD_ID`` (a zero row). The ids are computed in the graph (``Mul``, ``Add``, ``Mod``,
    ``Where``), so the model takes the task's token ids as ``embedding_bag`` does, and the one
    table is one ``Gather`` that int8 quantizes like ``embedding_bag``'s.

    Pooling: ``(sum of token vectors + bigram_scale * sum of bigram vectors) / tokens``. Adam
    moves every weight by about the learning rate per step, so the factor makes bigram vectors
    learn ``bigram_scale`` times slower than token vectors: most bigrams are seen once, and at
    full speed they memorise the training split, as an unregularised logistic regression on
    bigram counts would (rotten-tomatoes, dim 64, 20,000 buckets, 5 epochs: validation accuracy
    0.757 / 0.765 on seeds 1 / 2 at 1.0, 0.778 / 0.785 at 0.2, 0.779 / 0.780 at 0.05;
    ``embedding_bag`` 0.772 / 0.784).
    """

    def __init__(
        self,
        embed: nn.Embedding,
        head: nn.Sequential,
        vocab_size: int,
        buckets: int,
        bigram_scale: float,
        token_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed, self.head, self.token_dropout = embed, head, token_dropout
        self.vocab_size, self.buckets, self.bigram_scale = vocab_size, buckets, bigram_scale

    def bigram_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``(batch, length)`` token ids → ``(batch, length - 1)`` table rows of each adjacent
        pair's hashed bigram (``PAD_ID`` where either side is padding)."""
        first, second = ids[:, :-1], ids[:, 1:]
        hashed = torch.remainder(first * BIGRAM_HASH_MULT + second, self.buckets) + self.vocab_size
        real = (first != PAD_ID) & (second != PAD_ID)
        return torch.where(real, hashed, torch.zeros_like(hashed))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training:  # before the bigrams: a dropped token takes its two bigrams with it
            ids = drop_tokens(ids, self.token_dropout)
        # One Gather over tokens and bigrams together: (batch, 2 * length - 1, dim).
        vectors = self.embed(torch.cat([ids, self.bigram_ids(ids)], 1))
        length = ids.shape[1]
        tokens = vectors[:, :length].sum(1)
        bigrams = vectors[:, length:].sum(1)  # padding pairs read the zero row
        count = (ids != PAD_ID).sum(1, keepdim=True).to(vectors.dtype).clamp(min=1.0)
        return self.head((tokens + self.bigram_scale * bigrams) / count)


@MODELS.register("fasttext")
def fasttext(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int,
    dim: int = 64,
    buckets: int = 50_000,
    bigram_scale: float = 0.2,
    hidden: Sequence[int] = (),
    batch_norm: bool = False,
    dropout: float = 0.0,
    token_dropout: float = 0.0,
) -> nn.Module:
    """Embedding (``dim``) of tokens and of bigrams hashed into ``buckets`` rows → pooled over
    the non-padding ones, bigrams weighted by ``bigram_scale`` → head → logits; in training each
    token is dropped with probability ``token_dropout``, with the bigrams that touch it.

    ``buckets`` trades collisions for size and time (Adam updates the whole table each step):
    rotten-tomatoes' training split has ~82,000 distinct bigrams, ~18,000 of them seen twice or
    more; 50,000 rows gained 0.2-1.0 validation points over 20,000 on seeds 0-2.
    """
    _max_len("fasttext", input_shape)
    if buckets < 1:
        raise ValueError(f"model.buckets must be >= 1, got {buckets}")
    if bigram_scale < 0:
        raise ValueError(f"model.bigram_scale must be >= 0, got {bigram_scale}")
    embed = _embedding(vocab_size + buckets, dim)
    head = _head(dim, hidden, num_classes, batch_norm, dropout)
    return BagOfNgrams(
        embed, head, vocab_size, buckets, float(bigram_scale), _check_token_dropout(token_dropout)
    )


def fold_head(model: nn.Module) -> nn.Module:
    """An exact, narrower copy of a bag model (``embedding_bag``, ``fasttext``): its head's first
    Linear ``W`` (``dim → k``) multiplied into the embedding table, ``E' = E Wᵀ``, so the table
    is ``k`` wide and that Linear becomes the identity (its bias kept).

    Exact because the pooling is linear in the table's rows (a mean, or fasttext's weighted sum
    over the token count) and the dropout before ``W`` is the identity in eval mode: ``W pool(E)
    = pool(E Wᵀ)``. With no hidden layers ``k`` is ``num_classes``: a 64-wide model of two
    classes becomes a 2-wide one with the same logits, 32x smaller before int8. The result is
    what ``build_model`` makes of the same section with ``dim: k``, so it saves, reloads and
    exports like any other model. A model whose first Linear is not narrower than its table is
    returned as a copy, unchanged.

    Raises:
        TypeError: ``model`` is not a bag model (a textcnn's or lstm's pooling is not linear).

    Example:
        >>> model = embedding_bag((36,), 2, vocab_size=100, dim=8).eval()
        >>> ids = torch.randint(0, 100, (4, 36))
        >>> folded = fold_head(model)
        >>> folded.embed.embedding_dim, bool(torch.allclose(folded(ids), model(ids), atol=1e-6))
        (2, True)
    """
    if not isinstance(model, (BagOfEmbeddings, BagOfNgrams)):
        raise TypeError(
            f"only embedding_bag and fasttext models fold (pooling linear in the table), "
            f"not {type(model).__name__}"
        )
    folded = copy.deepcopy(model)
    first = _first_linear(model.head)
    linear = model.head[first]
    assert isinstance(linear, nn.Linear)  # _first_linear found it
    k = linear.out_features
    if k >= model.embed.embedding_dim:
        return folded
    with torch.no_grad():
        folded.embed = nn.Embedding(model.embed.num_embeddings, k, padding_idx=PAD_ID)
        folded.embed.weight.copy_(model.embed.weight @ linear.weight.T)  # padding row stays 0
        identity = nn.Linear(k, k)
        identity.weight.copy_(torch.eye(k))
        identity.bias.copy_(linear.bias)
    folded.head[first] = identity
    return folded


def _first_linear(head: nn.Sequential) -> int:
    """The index of the head's first Linear; ``_head`` puts only dropout before it."""
    for i, layer in enumerate(head):
        if isinstance(layer, nn.Linear):
            return i
        if not isinstance(layer, nn.Dropout):
            break
    raise TypeError("a bag model's head must start with [Dropout →] Linear")


class TextCNN(nn.Module):
    """Kim (2014): parallel 1-d convolutions over the embedded tokens, ReLU, max over time.

    Windows that cover only padding see zero vectors (``padding_idx``) and give the filter's
    bias: a constant floor under the max, the same for every input, that training absorbs.
    """

    def __init__(self, embed: nn.Embedding, convs: nn.ModuleList, head: nn.Sequential) -> None:
        super().__init__()
        self.embed, self.convs, self.head = embed, convs, head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids).transpose(1, 2)  # (batch, dim, length): Conv1d's channels first
        pooled = [torch.relu(conv(x)).amax(2) for conv in self.convs]  # each (batch, filters)
        return self.head(torch.cat(pooled, 1))


@MODELS.register("textcnn")
def textcnn(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int,
    dim: int = 64,
    kernel_sizes: Sequence[int] = (3, 4, 5),
    filters: int = 64,
    hidden: Sequence[int] = (),
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """Embedding (``dim``) → one Conv1d of ``filters`` per kernel width → ReLU → max over time →
    concatenated → head → logits (Kim used widths 3, 4, 5, 100 filters each, dropout 0.5)."""
    length = _max_len("textcnn", input_shape)
    if not kernel_sizes or max(kernel_sizes) > length:
        raise ValueError(
            f"model.kernel_sizes must be non-empty and at most max_len ({length}), "
            f"got {list(kernel_sizes)}"
        )
    embed = _embedding(vocab_size, dim)
    convs = nn.ModuleList(nn.Conv1d(dim, filters, int(k)) for k in kernel_sizes)
    head = _head(filters * len(kernel_sizes), hidden, num_classes, batch_norm, dropout)
    return TextCNN(embed, convs, head)


class BiLSTM(nn.Module):
    """A bidirectional LSTM over the embedded tokens, max-pooled over the non-padding positions.

    The LSTM's outputs lie in (-1, 1), so setting padded positions to -1 before the max leaves the
    max over the real tokens exact. Sequences are not packed (packing does not export to a plain
    ONNX graph): the backward direction reads the padding first, with zero inputs, and learns to.
    """

    def __init__(self, embed: nn.Embedding, lstm: nn.LSTM, head: nn.Sequential) -> None:
        super().__init__()
        self.embed, self.lstm, self.head = embed, lstm, head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))  # (batch, length, 2 * units)
        out = out.masked_fill((ids == PAD_ID).unsqueeze(-1), -1.0)
        return self.head(out.amax(1))


@MODELS.register("lstm")
def lstm(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int,
    dim: int = 64,
    units: int = 64,
    layers: int = 1,
    hidden: Sequence[int] = (),
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """Embedding (``dim``) → bidirectional LSTM (``units`` per direction, ``layers`` deep) → max
    over the non-padding positions → head → logits."""
    _max_len("lstm", input_shape)
    embed = _embedding(vocab_size, dim)
    # nn.LSTM's own dropout acts between stacked layers only (it warns when there is one layer).
    between = dropout if layers > 1 else 0.0
    rnn = nn.LSTM(dim, units, layers, batch_first=True, bidirectional=True, dropout=between)
    return BiLSTM(embed, rnn, _head(2 * units, hidden, num_classes, batch_norm, dropout))
