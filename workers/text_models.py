"""Text classifiers over token ids: ``embedding_bag``, ``textcnn`` and ``lstm``.

Each maps ``(batch, max_len)`` int64 token ids (0 = padding, as the ``rotten-tomatoes`` task
encodes them) to ``(batch, num_classes)`` logits. ``vocab_size`` is not a spec setting: the task
knows it, and ``build_model`` fills it from the task's ``extra``. The other keyword arguments are
the spec ``model`` section's, searchable like any other::

    model: {arch: textcnn, dim: 128, kernel_sizes: [3, 4, 5], filters: 100, dropout: 0.5}

Every model ends in the same head as ``mlp`` and ``cnn``, so the shared knobs mean the same
everywhere: ``hidden`` (widths of ``Linear → [BatchNorm] → ReLU → [Dropout]`` blocks between the
pooled features and the logits; none by default), ``batch_norm`` and ``dropout`` (also applied to
the pooled features, where text models need it most).

All three export to ONNX with int64 inputs through the fast TorchScript-based exporter
(``Gather`` for the embedding table, which ONNX Runtime's int8 quantizes like a weight).

Example:
    >>> import torch
    >>> model = embedding_bag((36,), 2, vocab_size=100, dim=8)
    >>> model(torch.randint(0, 100, (4, 36))).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workers.models import MODELS

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

    def __init__(self, embed: nn.Embedding, head: nn.Sequential) -> None:
        super().__init__()
        self.embed, self.head = embed, head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
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
) -> nn.Module:
    """Embedding (``dim``) → mean over the non-padding tokens → head → logits."""
    _max_len("embedding_bag", input_shape)
    embed = _embedding(vocab_size, dim)
    return BagOfEmbeddings(embed, _head(dim, hidden, num_classes, batch_norm, dropout))


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
