"""A Hugging Face model as a team writes it: ``BertForSequenceClassification`` built from a
config (no download). Its forward returns a ``SequenceClassifierOutput``; Podium trains, measures,
quantizes and serves its ``.logits``."""

from __future__ import annotations


def tiny_bert(input_shape, num_classes, vocab_size=100, hidden=32, layers=1):
    """A small BERT over token ids. ``vocab_size`` comes from the task (its vocabulary);
    ``hidden`` and ``layers`` are this builder's own settings, searchable in the spec."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max(16, int(input_shape[0])),
        num_labels=num_classes,
    )
    return BertForSequenceClassification(config)
