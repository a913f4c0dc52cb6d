"""Plain fine-tuning on the clean set: the baseline every defense must beat.

Defaults follow the NAD reference code's fine-tuning: 20 epochs, batch 64, SGD (momentum 0.9, Nesterov,
weight decay 1e-4), lr 0.1 for epochs 0-1 and 0.01 afterwards, random crop (4-pixel padding), horizontal
flip and one Cutout hole of length 3.
"""

from __future__ import annotations

import time

from nad.data.dataset import ImageData
from nad.defenses.base import Defense, Monitor, Repair, epoch_hook
from nad.defenses.registry import register_defense
from nad.models.checkpoint import Classifier
from nad.training import TrainConfig, train


@register_defense
class FineTune(Defense):
    name = "finetune"
    Config = TrainConfig

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        start = time.perf_counter()
        student = model.clone()
        hook = epoch_hook(monitor, "finetune", student)
        history = train(student, clean, self.config, desc="finetune", quiet=quiet, on_epoch=hook)
        return Repair(student, {"history": history.epochs, "seconds": {"finetune": time.perf_counter() - start}})
