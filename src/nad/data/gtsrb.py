"""GTSRB (the German Traffic Sign Recognition Benchmark) in its official layout, as the data spec ``gtsrb:ROOT``.

``ROOT`` (or ``ROOT/GTSRB``) holds::

    Final_Training/Images/000NN/*.ppm   with  Final_Training/Images/000NN/GT-000NN.csv   (one folder per class)
    Final_Test/Images/*.ppm             with  GT-final_test.csv (in Final_Test/Images/, Final_Test/ or ROOT)

The CSV files are semicolon-separated (``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``); only the
file name and the class are read. Images differ in size: each whole image (not only its ROI) is converted to
RGB and resized (bilinear) to 32x32, the usual 32x32 GTSRB of backdoor papers. 43 classes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from nad.data.dataset import ImageData
from nad.errors import NadError

GTSRB_CLASSES = 43
SIZE = (32, 32)
TEST_CSV = "GT-final_test.csv"


def gtsrb_base(root: str | Path) -> Path:
    """The folder holding ``Final_Training`` and ``Final_Test``: ``root`` itself or ``root/GTSRB``."""
    root = Path(root)
    for base in (root, root / "GTSRB"):
        if (base / "Final_Training").is_dir() or (base / "Final_Test").is_dir():
            return base
    raise NadError(f"{root}: no GTSRB here (expected Final_Training/ and Final_Test/, or GTSRB/ holding them)")


def read_gt_csv(path: Path) -> list[tuple[str, int]]:
    """``(Filename, ClassId)`` for every row of an official ground-truth CSV."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NadError(f"{path}: unreadable GTSRB CSV ({exc})") from None
    if rows and not {"Filename", "ClassId"} <= set(rows[0]):
        raise NadError(f"{path}: expected semicolon-separated columns Filename and ClassId")
    try:
        labels = [(row["Filename"], int(row["ClassId"])) for row in rows]
    except (TypeError, ValueError):
        raise NadError(f"{path}: ClassId must be an integer in every row") from None
    if any(not 0 <= c < GTSRB_CLASSES for _, c in labels):
        raise NadError(f"{path}: ClassId must lie in 0..{GTSRB_CLASSES - 1}")
    return labels


def _train_files(base: Path) -> list[tuple[Path, int]]:
    images = base / "Final_Training" / "Images"
    if not images.is_dir():
        raise NadError(f"{images}: no such directory (the GTSRB training images)")
    files = []
    for folder in sorted(d for d in images.iterdir() if d.is_dir()):
        table = folder / f"GT-{folder.name}.csv"
        if not table.is_file():
            raise NadError(f"{table}: missing (each class folder of Final_Training/Images has its GT-000NN.csv)")
        files += [(folder / name, label) for name, label in read_gt_csv(table)]
    if not files:
        raise NadError(f"{images}: no class folders with images")
    return files


def _test_files(base: Path) -> list[tuple[Path, int]]:
    images = base / "Final_Test" / "Images"
    if not images.is_dir():
        raise NadError(f"{images}: no such directory (the GTSRB test images)")
    for place in (images, images.parent, base, base.parent):
        if (place / TEST_CSV).is_file():
            return [(images / name, label) for name, label in read_gt_csv(place / TEST_CSV)]
    raise NadError(f"{images}: no {TEST_CSV} beside the test images (it holds their labels; GTSRB_Final_Test_GT.zip)")


def load_gtsrb(root: str | Path, split: str = "train") -> ImageData:
    from nad.data.images import read_image

    base = gtsrb_base(root)
    files = _train_files(base) if split == "train" else _test_files(base)
    missing = [str(f) for f, _ in files if not f.is_file()]
    if missing:
        raise NadError(f"{missing[0]}: listed in the GTSRB CSV but missing ({len(missing)} missing in all)")
    x = np.stack([read_image(f, SIZE) for f, _ in files]).transpose(0, 3, 1, 2)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageData(torch.from_numpy(np.ascontiguousarray(x)), y, GTSRB_CLASSES, f"gtsrb-{split}")
