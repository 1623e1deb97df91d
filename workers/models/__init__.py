"""Model architectures by name (:mod:`.catalogue`: ``mlp``, ``cnn``; :mod:`.text`: the text
classifiers), built from the spec's ``model`` section; :mod:`.trust` rebuilds one from metadata
that came from outside. Importing the package registers every built-in architecture."""

from workers.models import text  # noqa: F401  (registers the text models)
from workers.models.catalogue import MODELS, OUTPUT_KEY, build_model, logits_of
from workers.models.trust import build_from_metadata, check_model_metadata, guarded_builder

__all__ = [
    "MODELS",
    "OUTPUT_KEY",
    "build_from_metadata",
    "build_model",
    "check_model_metadata",
    "guarded_builder",
    "logits_of",
]
