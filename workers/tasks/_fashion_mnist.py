"""Fashion-MNIST (60k train + 10k test, 28x28 grey) from IDX files on disk.

The files come from Debian's ``dataset-fashion-mnist`` package; ``PODIUM_FASHION_MNIST_DIR`` points
elsewhere. Nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from workers.errors import DataNotFoundError
from workers.tasks._base import TASKS, TaskData, split_arrays
from workers.tasks._pipeline import rescale

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def data_dir() -> Path:
    return Path(os.environ.get("PODIUM_FASHION_MNIST_DIR", DEFAULT_DIR))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims as big-endian u32, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataNotFoundError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DataNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder}. Install the Debian package "
        "(sudo apt-get install dataset-fashion-mnist; `make install` does it as root) or set "
        "PODIUM_FASHION_MNIST_DIR to a folder with the four IDX files."
    )


def load_arrays(folder: Path | None = None) -> dict[str, np.ndarray]:
    folder = folder or data_dir()
    return {key: read_idx(find_file(folder, stem)) for key, stem in FILES.items()}


CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)  # fmt: skip  (Zalando's names for ids 0..9)


@TASKS.register("fashion-mnist")
def fashion_mnist(seed: int) -> TaskData:
    """The images as stored (uint8 0..255, 28x28); the model sees 0..1 in NCHW with one channel,
    scaled inside the registered graph. The official 10k test split is the test set."""
    a = load_arrays()
    return split_arrays(
        "fashion-mnist",
        a["x_train"],
        a["y_train"],
        seed,
        val_fraction=1 / 12,
        test=(a["x_test"], a["y_test"]),
        preprocess=rescale(1 / 255, (1, 28, 28)),
        classes=CLASSES,
    )
