"""The ``distill`` step: train a fresh, usually smaller student to match a teacher's softened
outputs (Hinton et al. 2015).

Loss per batch: ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE``.
The ``T^2`` keeps the soft term's gradient scale independent of the temperature.

The teacher is ``trial`` (the model as the recipe has it at this step: the trial's trained model
when distill comes first) or ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` from the
MLflow registry. Workers never talk to MLflow: the driver resolves registry teachers before any
trial starts (``tracking.teachers.fetch_teacher``) and passes local files in
``RecipeContext.teachers``. A teacher file is ONNX (run with ONNX Runtime) or a weights-only torch
file ``{state_dict, model, input_shape, num_classes, extra}``.

The teacher's logits for the whole training split are computed once: the teacher is frozen, so
this is exact and makes each student epoch cost only the student's forward and backward.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tracking import keys
from tracking.pipeline import model_part, session
from workers import storage
from workers.errors import WorkerError
from workers.models import MODELS, build_from_metadata, build_model
from workers.optimizers._base import HParam
from workers.recipes._base import (
    STEPS,
    IntListParam,
    Problems,
    RecipeContext,
    RecipeState,
    StepEntry,
    StrParam,
)
from workers.recipes._train import make_optimizer, train_epoch
from workers.registry import declared_settings, is_plugin_ref, load_plugin
from workers.tasks import TaskData

# What a student may change from the trial's model (dim: a text model's embedding width).
STUDENT_KEYS = ("arch", "hidden", "channels", "dim")
TEACHER_URI = re.compile(r"^models:/[^/@]+(@[A-Za-z_][A-Za-z0-9_-]*|/\d+)$")


def is_registry_teacher(value: object) -> bool:
    return isinstance(value, str) and bool(TEACHER_URI.match(value))


def distill(state: RecipeState, p: dict, data: TaskData, ctx: RecipeContext) -> None:
    """Replace ``state.model`` with a student distilled from the teacher."""
    teacher = _teacher(state, p["teacher"], ctx)
    if data.in_memory:  # once for the whole split
        soft: Any = teacher_logits(teacher, data.x_train, plugins=ctx.plugins)
    else:  # a Dataset's batches come in a new order each epoch: the teacher answers each one
        # (cloned: an inference-mode tensor cannot enter the student's autograd graph)
        soft = lambda x: teacher_logits(teacher, x, plugins=ctx.plugins).clone()  # noqa: E731
    section = student_section(state.section, {k: p[k] for k in STUDENT_KEYS if p[k] is not None})
    torch.manual_seed(ctx.seed)
    student = build_model(section, data.input_shape, data.num_classes, data.extra)
    student = student.to(ctx.device)
    generator = torch.Generator().manual_seed(ctx.seed)
    opt = make_optimizer(student, p["lr"])
    loss_fn = _distill_loss(p["temperature"], p["alpha"], data)
    for _ in range(p["epochs"]):
        train_epoch(
            student,
            data,
            opt=opt,
            batch_size=p["batch_size"],
            generator=generator,
            loss_fn=loss_fn,
            aux=soft,
            device=ctx.device,
        )
    state.model, state.section = student.cpu().eval(), section


def student_section(trial: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The student's model section: the trial's with the step's ``changes``. A student of another
    arch keeps only the trial's settings its builder takes (a textcnn's ``kernel_sizes`` mean
    nothing to an embedding_bag; its ``dim`` and ``dropout`` do), so the section saved with the
    student describes it.

    Example:
        >>> student_section({"arch": "textcnn", "dim": 64, "filters": 64}, {"arch": "lstm"})
        {'arch': 'lstm', 'dim': 64}
    """
    section = {**trial, **changes}
    arch = section.get("arch", "mlp")
    if arch == trial.get("arch", "mlp"):
        return section
    declared, takes_any = declared_settings(
        load_plugin(arch) if is_plugin_ref(arch) else MODELS.get(arch)
    )
    if takes_any:
        return section
    return {k: v for k, v in section.items() if k == "arch" or k in changes or k in declared}


def _distill_loss(temperature: float, alpha: float, data: TaskData):  # noqa: ANN202
    """A classifier's student matches the teacher's softened distribution (KL, Hinton et al.);
    any other kind's matches the teacher's outputs (MSE). Both beside the task's own loss."""
    own = data.loss_fn()
    classifier = data.kind == "classification"

    def loss(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None
    ) -> torch.Tensor:
        assert teacher is not None  # train_epoch passes the batch's teacher outputs as aux
        out = model(x)
        if not classifier:
            return alpha * F.mse_loss(out, teacher) + (1 - alpha) * own(out, y)
        soft = F.kl_div(
            F.log_softmax(out / temperature, 1),
            F.log_softmax(teacher / temperature, 1),
            reduction="batchmean",
            log_target=True,
        )
        return alpha * temperature**2 * soft + (1 - alpha) * own(out, y)

    return loss


def _teacher(state: RecipeState, teacher: str, ctx: RecipeContext) -> nn.Module | Path:
    if teacher == "trial":
        return state.model
    path = ctx.teachers.get(teacher)
    if path is None:
        raise WorkerError(
            f"recipe distill.teacher {teacher!r} was not resolved by the driver; "
            "registry teachers are fetched before trials start"
        )
    return teacher_file(_local_teacher(path))


# Registry teachers the driver put on object storage, downloaded once per trial process (a
# reused actor runs many trials with the same teachers).
_DOWNLOADED: dict[str, Path] = {}


def _local_teacher(location: str) -> Path:
    if not storage.is_uri(location):
        return Path(location)
    if location not in _DOWNLOADED:
        _DOWNLOADED[location] = storage.download(
            location, tempfile.mkdtemp(prefix="podium-teacher-")
        )
    return _DOWNLOADED[location]


def teacher_file(path: Path) -> Path:
    """The file to load from a downloaded model folder: its ONNX file (the registry's servable
    copy) first, else its weights-only state dict; a file is returned as it is."""
    if not path.is_dir():
        return path
    onnx_files = sorted(path.rglob("*.onnx"))
    named = [f for f in onnx_files if f.name == keys.ONNX_ARTIFACT]
    if named or onnx_files:
        return (named or onnx_files)[0]
    weights = sorted(path.rglob(keys.STATE_DICT_ARTIFACT))
    if weights:
        return weights[0]
    raise WorkerError(
        f"teacher folder {path.name} holds neither an ONNX file nor {keys.STATE_DICT_ARTIFACT}"
    )


@torch.inference_mode()
def teacher_logits(
    teacher: nn.Module | Path, x: torch.Tensor, batch: int = 1024, plugins: Any = ()
) -> torch.Tensor:
    """The teacher's logits for every row of ``x`` (float32, CPU); a state-dict teacher is
    rebuilt only as a built-in architecture or one of ``plugins`` (see load_torch_teacher)."""
    if isinstance(teacher, Path) and teacher.suffix == ".onnx":
        from workers.recipes._measure import onnx_predict

        arr = np.ascontiguousarray(x.detach().cpu().numpy())  # in its dtype: int64 token ids too
        return torch.from_numpy(onnx_predict(_teacher_session(teacher), arr))
    model = load_torch_teacher(teacher, plugins) if isinstance(teacher, Path) else teacher
    model.eval()
    device = next(model.parameters()).device
    return torch.cat(
        [model(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    )


def _teacher_session(path: Path) -> Any:
    """A session of the teacher's model part: a registered champion is the whole pipeline
    (raw inputs to an answer); distillation feeds it model inputs and reads its logits."""
    import onnx

    model = model_part(onnx.load(str(path)))
    return session(model.SerializeToString(), threads=torch.get_num_threads())


def load_torch_teacher(path: Path, plugins: Any = ()) -> nn.Module:
    """Rebuild a teacher from a weights-only ``{state_dict, model, input_shape, num_classes,
    extra}`` (``extra``: the task's facts a text model is built from, e.g. ``vocab_size``).

    A registry's metadata is data: its architecture is rebuilt only if it is a built-in one or
    one of ``plugins`` (the sweep's own references), checked before anything is imported.

    Raises:
        UntrustedModelError: the metadata names other code, or is malformed.
    """
    blob = torch.load(path, weights_only=True, map_location="cpu")
    arch = path.with_name(keys.ARCH_ARTIFACT)
    if path.name == keys.STATE_DICT_ARTIFACT and arch.exists():  # the registry's layout
        blob = {**json.loads(arch.read_text()), "state_dict": blob}
    try:
        model = build_from_metadata(blob, plugins)
        model.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise WorkerError(f"teacher file {path.name} is not a Podium model file: {e}") from e
    return model.eval()


def _check(p: dict) -> Problems:
    out: Problems = []
    if p["teacher"] != "trial" and not is_registry_teacher(p["teacher"]):
        out.append(
            (
                "teacher",
                p["teacher"],
                "must be 'trial' or a registry URI "
                "models:/<name>@<alias> or models:/<name>/<version>",
            )
        )
    if p["arch"] is not None and p["arch"] not in MODELS and not is_plugin_ref(p["arch"]):
        out.append(
            (
                "arch",
                p["arch"],
                f"{p['arch']!r} is not one of: {', '.join(MODELS.names())} (or module:function)",
            )
        )
    if p["temperature"] <= 0:
        out.append(("temperature", p["temperature"], f"must be > 0, got {p['temperature']!r}"))
    return out


STEPS.add(
    "distill",
    StepEntry(
        name="distill",
        doc="train a fresh student on a teacher's softened outputs",
        params={
            "teacher": StrParam(
                "trial", "'trial' or models:/<name>@<alias> | models:/<name>/<version>"
            ),
            "arch": StrParam(
                None, "student architecture, e.g. mlp under a cnn teacher (default: the trial's)"
            ),
            "hidden": IntListParam(None, "student hidden widths (default: the trial's)"),
            "channels": IntListParam(
                None, "student conv channels, cnn only (default: the trial's)"
            ),
            "dim": HParam(
                None, "student embedding width, text models (default: the trial's)", int, low=1
            ),
            "temperature": HParam(4.0, "softmax temperature for both models", float, low=0.0),
            "alpha": HParam(
                0.7,
                "weight of the soft (teacher) term; 1 - alpha on the labels",
                float,
                low=0.0,
                high=1.0,
            ),
            "epochs": HParam(5, "student training epochs", int, low=1),
            "lr": HParam(1e-3, "Adam learning rate", float, low=0.0),
            "batch_size": HParam(128, "batch size", int, low=1),
        },
        apply=distill,
        check=_check,
    ),
)
