"""Datasets as uint8 tensors, read without network access, plus batched augmentation."""

from nad.data.augment import Augment, augment_batch
from nad.data.dataset import ImageData, fingerprint, stratified_split
from nad.data.sources import DATA_KINDS, load_data, parse_data_spec

__all__ = [
    "DATA_KINDS",
    "Augment",
    "ImageData",
    "augment_batch",
    "fingerprint",
    "load_data",
    "parse_data_spec",
    "stratified_split",
]
