"""Readers for the dataset kinds the command line accepts: ``cifar10``, ``npz``, ``folder``, ``digits``.

Specs: ``cifar10:ROOT`` (``ROOT`` holds ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``; add
``:train`` or ``:test``), ``npz:PATH``, ``folder:PATH`` (one sub-folder of images per class), ``digits``
(scikit-learn's bundled 8x8 handwritten digits, upscaled to 16x16; add ``:train`` or ``:test``). A bare path
is recognised by what it holds. ``gtsrb:ROOT`` reads the official GTSRB layout (``nad.data.gtsrb``; add
``:train`` or ``:test``).

No reader touches the network. CIFAR-10 batches are pickles, so they are read with an unpickler that only
admits the plain containers and numpy array types those files hold: a hostile "dataset" cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nad.data.dataset import ImageData, stratified_split
from nad.data.images import IMAGE_SUFFIXES, read_image
from nad.errors import NadError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
SPLITS = ("train", "test")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits the globals a CIFAR batch needs (numpy arrays and dtypes) and nothing else."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
            ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # a truncated or corrupt file can fail in many ways inside pickle
        raise NadError(f"{where}: not a readable CIFAR batch ({exc})") from None
    if not isinstance(batch, dict):
        raise NadError(f"{where}: not a CIFAR batch (expected a dict)")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise NadError(f"{where}: 'data' must be a uint8 array of shape (N, 3072)")
    try:
        labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        raise NadError(f"{where}: 'labels' must hold {len(data)} integers in 0..9") from None
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise NadError(f"{where}: 'labels' must hold {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_files(root: Path) -> Callable[[str], bytes]:
    """A function that returns the bytes of a named batch, from a folder or from the official tarball."""
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "test_batch").is_file():
            return lambda name: _read_bytes(folder / name)
    for tar_path in (root / "cifar-10-python.tar.gz", root):
        if tar_path.is_file() and tarfile.is_tarfile(tar_path):
            return lambda name: _read_from_tar(tar_path, f"cifar-10-batches-py/{name}")
    raise NadError(f"{root}: no CIFAR-10 here (expected cifar-10-batches-py/ or cifar-10-python.tar.gz)")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise NadError(f"{path}: missing CIFAR-10 batch file")
    return path.read_bytes()


def _read_from_tar(tar_path: Path, member: str) -> bytes:
    try:
        with tarfile.open(tar_path) as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except (KeyError, tarfile.TarError, OSError, EOFError) as exc:
        raise NadError(f"{tar_path}: cannot read {member} ({exc})") from None


def load_cifar10(root: str | Path, split: str = "train") -> ImageData:
    root = Path(root)
    if not root.exists():
        raise NadError(f"{root}: no such file or directory")
    read = _cifar_files(root)
    names = CIFAR10_TRAIN if split == "train" else ("test_batch",)
    parts = [_read_cifar_batch(read(n), f"{root}/{n}") for n in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ImageData(torch.from_numpy(x), torch.from_numpy(y), 10, f"cifar10-{split}", CIFAR10_CLASSES)


def load_npz(path: str | Path) -> ImageData:
    """``x``: uint8 (N, H, W, C) or (N, H, W); ``y``: integers. ``num_classes`` is read if present."""
    path = Path(path)
    if not path.is_file():
        raise NadError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:
        raise NadError(f"{path}: not a readable .npz file ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise NadError(f"{path}: expected arrays 'x' and 'y', found {sorted(arrays) or 'none'}")
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise NadError(f"{path}: 'x' must be uint8 of shape (N, H, W, C) or (N, H, W), got {x.dtype} {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
        raise NadError(f"{path}: 'y' must be {len(x)} integers, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise NadError(f"{path}: labels must be non-negative")
    x = x[..., None] if x.ndim == 3 else x
    if "num_classes" in arrays and arrays["num_classes"].shape not in ((), (1,)):
        raise NadError(f"{path}: 'num_classes' must be a single integer")
    k = int(arrays["num_classes"].reshape(())) if "num_classes" in arrays else int(y.max()) + 1 if len(y) else 0
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return ImageData(images, torch.from_numpy(y.astype(np.int64)), k, path.stem)


def scan_folder(path: str | Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The image files of an ImageFolder layout (one sub-folder per class, sorted), their labels, the classes."""
    path = Path(path)
    if not path.is_dir():
        raise NadError(f"{path}: no such directory")
    classes = tuple(sorted(d.name for d in path.iterdir() if d.is_dir()))
    if not classes:
        raise NadError(f"{path}: expected one sub-folder of images per class, found none")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(f for f in (path / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise NadError(f"{path}: no images found in its class folders")
    return files, labels, classes


def load_folder(path: str | Path) -> ImageData:
    """ImageFolder layout; images are converted to RGB and resized to the first image's size."""
    files, labels, classes = scan_folder(path)
    first = read_image(files[0])
    size = (first.shape[1], first.shape[0])
    images = [first] + [read_image(f, size) for f in files[1:]]
    x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    return ImageData(x, torch.tensor(labels, dtype=torch.int64), len(classes), Path(path).name, classes)


def load_digits(split: str = "train") -> ImageData:
    """scikit-learn's 1,797 bundled 8x8 digits, scaled to 0..255 and upscaled (nearest) to 16x16.

    A fixed stratified 80/20 split (seed 0) gives 1,438 training and 359 test images.
    """
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = torch.from_numpy(np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    y = torch.from_numpy(raw.target.astype(np.int64))
    test, train = stratified_split(y, 0.2, seed=0)
    index = train if split == "train" else test
    classes = tuple(str(i) for i in range(10))
    return ImageData(x[index].contiguous(), y[index], 10, f"digits-{split}", classes)


DATA_KINDS = ("cifar10", "npz", "folder", "digits", "gtsrb")
#: The input normalisation a model trained on each dataset kind gets by default.
DEFAULT_NORMALIZE = {"cifar10": "cifar10", "digits": "digits", "gtsrb": "gtsrb"}


def default_test_spec(data_spec: str, explicit: str | None) -> str | None:
    """The test set: ``explicit`` (``--test``) if given, else the test split of a dataset that has one."""
    if explicit:
        return explicit
    kind, location, _ = parse_data_spec(data_spec)
    if kind == "digits":
        return "digits:test"
    if kind in ("cifar10", "gtsrb"):
        return f"{kind}:{location}:test"
    return None


def parse_data_spec(spec: str, default_split: str = "train") -> tuple[str, str, str]:
    """``"cifar10:/data:test"`` -> ``("cifar10", "/data", "test")``; a bare path is recognised by content."""
    kind, sep, rest = spec.partition(":")
    if kind == "digits":
        split = rest or default_split
        location = ""
    elif kind in DATA_KINDS and sep:
        location, split = rest, default_split
        head, _, tail = rest.rpartition(":")
        if tail in SPLITS and head:
            location, split = head, tail
    else:
        location, split = spec, default_split
        head, _, tail = spec.rpartition(":")
        if tail in SPLITS and head:
            location, split = head, tail
        kind = _guess_kind(Path(location))
    if split not in SPLITS:
        raise NadError(f"data {spec!r}: split must be train or test, got {split!r}")
    return kind, location, split


def _guess_kind(path: Path) -> str:
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise NadError(f"{str(path)[:80]}...: not a usable path ({exc.strerror})") from None
    if not exists:
        raise NadError(f"{path}: no such file or directory (data specs: {', '.join(k + ':PATH' for k in DATA_KINDS)})")
    if path.suffix == ".npz":
        return "npz"
    if path.is_file() or (path / "cifar-10-batches-py").is_dir() or (path / "cifar-10-python.tar.gz").is_file():
        return "cifar10"
    if (path / "test_batch").is_file():
        return "cifar10"
    if (path / "Final_Training").is_dir() or (path / "GTSRB" / "Final_Training").is_dir():
        return "gtsrb"
    return "folder"


def load_data(spec: str, default_split: str = "train") -> ImageData:
    kind, location, split = parse_data_spec(spec, default_split)
    if kind == "cifar10":
        return load_cifar10(location, split)
    if kind == "digits":
        return load_digits(split)
    if kind == "npz":
        return load_npz(location)
    if kind == "gtsrb":
        from nad.data.gtsrb import load_gtsrb

        return load_gtsrb(location, split)
    return load_folder(location)
