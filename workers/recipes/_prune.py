"""The ``prune`` step: unstructured magnitude pruning, or structured pruning that rebuilds a
smaller model.

* ``l1_unstructured``: in each Linear, Conv1d/Conv2d and Embedding weight (``PRUNABLE``; a text
  model's embedding table is most of its weights), the ``sparsity`` fraction of smallest-|w|
  entries become exactly zero. ``nonzero_params`` drops; the ONNX file and latency do not (dense
  kernels store and multiply zeros) — Podium reports that as it is.
* ``global_magnitude``: one threshold over all those weights together, so layers with many small
  weights lose more.
* ``structured``: whole output neurons (Linear rows) / channels (Conv2d filters) with the smallest
  L1 norm are removed and the next layer's inputs and any BatchNorm are sliced to match, giving a
  genuinely smaller ``nn.Sequential``: file size and latency drop with the width. It needs a chain
  of Linear/Conv blocks (the built-in ``mlp`` and ``cnn``); on any other model (the text models,
  a user's own module) it stops with an error that names the unstructured methods instead.

``schedule: gradual`` ramps sparsity over ``prune_epochs`` epochs (cubic ramp, Zhu & Gupta 2017:
fast early, gentle near the target) with a training epoch after each increment; then
``finetune_epochs`` of training at the final sparsity. Unstructured masks are re-applied after
every optimizer step so pruned weights stay zero.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from workers.errors import WorkerError
from workers.optimizers._base import HParam
from workers.recipes._base import STEPS, Problems, RecipeContext, RecipeState, StepEntry
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import TaskData

METHODS = ("l1_unstructured", "global_magnitude", "structured")
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.EmbeddingBag)  # unstructured methods
Masks = dict[torch.Tensor, torch.Tensor]  # weight -> 0/1 mask of the same shape


def prune(state: RecipeState, p: dict, data: TaskData, ctx: RecipeContext) -> None:
    """Apply the ``prune`` step to ``state.model`` (see the module docstring)."""
    generator = torch.Generator().manual_seed(ctx.seed)
    targets = (
        _ramp(p["sparsity"], p["prune_epochs"]) if p["schedule"] == "gradual" else [p["sparsity"]]
    )
    original = _prunable_widths(state.model) if p["method"] == "structured" else []
    masks: Masks = {}
    for i, sparsity in enumerate(targets):
        if p["method"] == "structured":
            widths = [max(1, round((1 - sparsity) * w)) for w in original]
            state.model = shrink(state.model, widths)
            _update_section(state, widths)
        else:
            masks = magnitude_masks(
                state.model, sparsity, per_layer=p["method"] == "l1_unstructured"
            )
            apply_masks(masks)
        if i < len(targets) - 1:  # a training epoch between increments; the last is fine-tuning
            _train(state.model, data, p, ctx, generator, masks, epochs=1)
    _train(state.model, data, p, ctx, generator, masks, epochs=p["finetune_epochs"])


def _ramp(final: float, epochs: int) -> list[float]:
    """Cubic sparsity ramp ``s_e = s (1 - (1 - e/E)^3)`` for e = 1..E; ends exactly at ``s``."""
    return [final * (1 - (1 - e / epochs) ** 3) for e in range(1, epochs + 1)]


def _train(
    model: nn.Module,
    data: TaskData,
    p: dict,
    ctx: RecipeContext,
    generator: torch.Generator,
    masks: Masks,
    epochs: int,
) -> None:
    if epochs <= 0:
        return
    model.to(ctx.device)
    masks = {param: m.to(ctx.device) for param, m in masks.items()}
    opt = make_optimizer(model, p["lr"])
    for _ in range(epochs):
        train_epoch(
            model,
            data,
            opt=opt,
            batch_size=p["batch_size"],
            generator=generator,
            after_step=(lambda: apply_masks(masks)) if masks else None,
            device=ctx.device,
        )
    model.cpu()


# --------------------------------------------------------------------------- unstructured


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]


def magnitude_masks(model: nn.Module, sparsity: float, per_layer: bool) -> Masks:
    """0/1 masks zeroing the ``sparsity`` fraction of smallest-magnitude weights of the
    ``PRUNABLE`` layers, per layer or over all of them at once (global). Biases are never
    pruned."""
    weights = _weights(model)
    if per_layer:
        return {w: _keep_largest(w.detach().abs().flatten(), sparsity).view_as(w) for w in weights}
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    keep = _keep_largest(flat, sparsity)
    out, start = {}, 0
    for w in weights:
        out[w] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


def _keep_largest(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A float mask keeping all but the ``round(sparsity * n)`` smallest values (ties by index)."""
    n_prune = round(sparsity * values.numel())
    mask = torch.ones_like(values)
    if n_prune:
        mask[torch.argsort(values, stable=True)[:n_prune]] = 0.0
    return mask


@torch.no_grad()
def apply_masks(masks: Masks) -> None:
    for param, mask in masks.items():
        param.mul_(mask)


# --------------------------------------------------------------------------- structured

_PASSTHROUGH = (
    nn.ReLU,
    nn.Flatten,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Identity,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
)


_NOT_A_CHAIN = (
    "prune method 'structured' needs a chain of Linear/Conv blocks (an nn.Sequential of "
    "Linear, Conv2d, BatchNorm, activations and pooling, as the built-in mlp and cnn are) to "
    "rebuild a narrower copy; {what}. Use method l1_unstructured or global_magnitude instead, "
    "which zero weights of any model in place."
)


def _layers(model: nn.Module) -> list[nn.Module]:
    """The layers of a model that structured pruning can rebuild.

    Raises:
        WorkerError: ``model`` is not such a chain (e.g. a text model), naming what it is.
    """
    if not isinstance(model, nn.Sequential):
        raise WorkerError(_NOT_A_CHAIN.format(what=f"this model is a {type(model).__name__}"))
    for layer in model:
        if not isinstance(
            layer, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, *_PASSTHROUGH)
        ):
            raise WorkerError(
                _NOT_A_CHAIN.format(what=f"this one has a {type(layer).__name__} layer")
            )
    return list(model)


def _prunable(layers: list[nn.Module]) -> list[int]:
    """Indices of Linear/Conv2d layers whose outputs may shrink: all but the last (the logits)."""
    weighted = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    return weighted[:-1]


def _prunable_widths(model: nn.Module) -> list[int]:
    layers = _layers(model)
    return [_out_units(layers[i]) for i in _prunable(layers)]  # type: ignore[arg-type]


Weighted = nn.Linear | nn.Conv2d
Norm = nn.BatchNorm1d | nn.BatchNorm2d


def _out_units(layer: Weighted) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@torch.no_grad()
def shrink(model: nn.Module, widths: list[int]) -> nn.Sequential:
    """A new, smaller copy of ``model`` whose prunable layers keep their ``widths`` highest-L1
    output units; the following layers' inputs (and BatchNorms) are sliced to match."""
    layers = _layers(model)
    prunable = dict(zip(_prunable(layers), widths, strict=True))
    keep: torch.Tensor | None = None  # kept output units of the previous weighted layer
    units = 0  # how many units that layer had before slicing
    new: list[nn.Module] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            w = layer.weight.detach()
            if keep is not None:
                w = w[:, _input_index(layer, keep, units)]
            out_keep = None
            if i in prunable and prunable[i] < w.shape[0]:
                score = w.abs().flatten(1).sum(1)  # L1 norm of each output unit's weights
                out_keep = torch.sort(torch.topk(score, prunable[i]).indices).values
            new.append(_sliced(layer, w, out_keep))
            keep, units = out_keep, _out_units(layer)
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new.append(_sliced_norm(layer, keep))
        else:
            new.append(copy.deepcopy(layer))
    return nn.Sequential(*new).eval()


def _input_index(layer: Weighted, keep: torch.Tensor, units: int) -> torch.Tensor:
    """Input columns of ``layer`` that survive: the kept units themselves, or, for a Linear after
    Conv2d + Flatten, each kept channel's block of ``in_features / channels`` spatial positions."""
    n_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if n_in == units:
        return keep
    spatial = n_in // units
    return (keep[:, None] * spatial + torch.arange(spatial)).flatten()


def _sliced(layer: Weighted, w: torch.Tensor, out_keep: torch.Tensor | None) -> nn.Module:
    """A copy of ``layer`` (same kernel, stride, padding...) holding only the kept weights."""
    bias = layer.bias.detach() if layer.bias is not None else None
    if out_keep is not None:
        w = w[out_keep]
        bias = bias[out_keep] if bias is not None else None
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(w.clone())
    if bias is not None:
        new.bias = nn.Parameter(bias.clone())
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = w.shape[0], w.shape[1]
    else:
        new.out_channels, new.in_channels = w.shape[0], w.shape[1]
    return new


def _sliced_norm(norm: Norm, keep: torch.Tensor | None) -> nn.Module:
    """A copy of ``norm`` with only the kept features' affine parameters and running stats."""
    idx = keep if keep is not None else torch.arange(norm.num_features)
    new = copy.deepcopy(norm)
    new.num_features = len(idx)
    if norm.weight is not None and norm.bias is not None:
        new.weight = nn.Parameter(norm.weight.detach()[idx].clone())
        new.bias = nn.Parameter(norm.bias.detach()[idx].clone())
    if norm.running_mean is not None and norm.running_var is not None:
        new.register_buffer("running_mean", norm.running_mean[idx].clone())
        new.register_buffer("running_var", norm.running_var[idx].clone())
    return new


def _update_section(state: RecipeState, widths: list[int]) -> None:
    """Keep ``state.section`` describing the rebuilt model (built-in archs only)."""
    arch = state.section.get("arch", "mlp")
    if arch == "mlp":
        state.section = {**state.section, "hidden": list(widths)}
    elif arch == "cnn":
        n_conv = len(state.section.get("channels", (16, 32)))
        state.section = {
            **state.section,
            "channels": list(widths[:n_conv]),
            "hidden": list(widths[n_conv:]),
        }


def _check(p: dict) -> Problems:
    if not 0 <= p["sparsity"] < 1:
        return [("sparsity", p["sparsity"], f"must be in [0, 1), got {p['sparsity']!r}")]
    return []


STEPS.add(
    "prune",
    StepEntry(
        name="prune",
        doc="zero (unstructured) or remove (structured) the smallest weights, then fine-tune",
        params={
            "method": HParam("l1_unstructured", "how weights are chosen", str, choices=METHODS),
            "sparsity": HParam(
                0.5,
                "fraction of weights (units, for structured) removed, in [0, 1)",
                float,
                low=0.0,
                high=1.0,
            ),
            "schedule": HParam(
                "oneshot",
                "oneshot, or gradual over prune_epochs",
                str,
                choices=("oneshot", "gradual"),
            ),
            "prune_epochs": HParam(3, "epochs the gradual ramp takes", int, low=1),
            "finetune_epochs": HParam(2, "training epochs at the final sparsity", int, low=0),
            "lr": HParam(1e-3, "Adam learning rate for fine-tuning", float, low=0.0),
            "batch_size": HParam(128, "fine-tuning batch size", int, low=1),
        },
        apply=prune,
        check=_check,
    ),
)
