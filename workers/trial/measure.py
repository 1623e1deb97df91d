"""Model size facts every trial reports (compression recipes add latency and export sizes)."""

from __future__ import annotations

import io

import torch
from torch import nn


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero_params(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the fp32 state dict as ``torch.save`` writes it: what a checkpoint costs on disk."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()
