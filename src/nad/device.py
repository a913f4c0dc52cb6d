"""Device choice and the per-device settings that make the loops fast."""

from __future__ import annotations

import torch

from nad import distributed
from nad.errors import NadError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return own_gpu(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NadError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NadError(f"--device {name}: CUDA is not available here")
    device = own_gpu(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def own_gpu(device: torch.device) -> torch.device:
    """Under torchrun, an unnumbered ``cuda`` is this process's GPU (``LOCAL_RANK``), not GPU 0 for all."""
    if device.type == "cuda" and device.index is None and distributed.active():
        if distributed.local_rank() >= torch.cuda.device_count():
            raise NadError(
                f"torchrun started more processes on this machine than its {torch.cuda.device_count()} GPU(s); "
                "lower --nproc_per_node or train on the CPU with --device cpu"
            )
        return torch.device("cuda", distributed.local_rank())
    return device
