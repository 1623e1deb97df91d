"""Plug-in models as teams write them (tests/workers/test_model_outputs.py): a Hugging Face
model built from a config (no download), which returns a ``ModelOutput``, and a model that
returns a dict whose logits are not called ``logits``."""

from __future__ import annotations

import torch
from torch import nn


def tiny_bert(input_shape, num_classes, vocab_size=100, hidden=32):
    """``BertForSequenceClassification`` of one layer over token ids: returns a
    ``SequenceClassifierOutput``."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max(16, int(input_shape[0])),
        num_labels=num_classes,
    )
    return BertForSequenceClassification(config)


class _Scored(nn.Module):
    def __init__(self, n_in: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(n_in, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.body(x))
        return {"features": features, "scores": self.head(features)}


def scored(input_shape, num_classes):
    """Returns ``{"features": ..., "scores": logits}``: needs ``model.output: scores``."""
    return _Scored(int(input_shape[0]), num_classes)
