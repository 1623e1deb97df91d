"""The ``fold`` step: multiply a bag model's first head Linear into its embedding table.

An ``embedding_bag`` or ``fasttext`` pools its table's rows linearly, so the Linear after the
pooling can move inside it: ``W pool(E) = pool(E Wᵀ)`` (``workers.models.text.fold_head``). The
table shrinks from ``dim`` to that Linear's width (``num_classes`` without hidden layers) and the
logits stay the same up to float rounding: compression that costs no accuracy and needs no
training. Put it before ``quantize``: the narrower table is then what int8 quantizes.

Example spec::

    recipe:
      - {step: fold}
      - {step: quantize, mode: dynamic}
"""

from __future__ import annotations

from torch import nn

from workers.errors import WorkerError
from workers.models.text import fold_head
from workers.recipes._base import STEPS, RecipeContext, RecipeState, StepEntry
from workers.tasks import TaskData


def fold(state: RecipeState, p: dict, data: TaskData, ctx: RecipeContext) -> None:
    """Replace ``state.model`` by its folded copy; the section's ``dim`` follows."""
    try:
        folded = fold_head(state.model)
    except TypeError as e:
        arch = state.section.get("arch", "mlp")
        raise WorkerError(
            f"recipe step fold needs model.arch embedding_bag or fasttext, got {arch!r}: {e}"
        ) from e
    table = folded.get_submodule("embed")
    assert isinstance(table, nn.Embedding)  # fold_head made it
    state.model = folded.eval()
    state.section = {**state.section, "dim": table.embedding_dim}


STEPS.add(
    "fold",
    StepEntry(
        name="fold",
        doc="fold a bag model's first head Linear into its embedding table (exact, no training)",
        params={},
        apply=fold,
    ),
)
