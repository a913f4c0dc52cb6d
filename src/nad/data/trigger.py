"""What the layers below the attacks need of an attack, as a protocol: scoring it (``nad.metrics``) and
poisoning a streamed folder (``nad.data.stream``). ``nad.attacks.Attack`` satisfies it; the attacks sit
above the data and the metrics, which therefore name this protocol instead of importing them."""

from __future__ import annotations

from typing import Literal, Protocol

from torch import Tensor

from nad.data.dataset import ImageData


class Trigger(Protocol):
    name: str
    target: int
    mode: Literal["all2one", "all2all"]
    clean_label: bool

    def test_set(self, data: ImageData) -> ImageData:
        """Triggered test images (non-target ones for all2one) labelled as the attacker wants."""
        ...

    def poison_images(self, x: Tensor, y: Tensor) -> Tensor:
        """The training-time trigger on uint8 images ``x`` of labels ``y``."""
        ...

    def target_labels(self, y: Tensor, num_classes: int) -> Tensor:
        """The labels the attacker wants for images of labels ``y``."""
        ...
