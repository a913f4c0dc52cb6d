"""Device choice and the per-device settings that make the loops fast."""

from __future__ import annotations

import os

import torch

from nad import distributed
from nad.errors import NadError


def resolve_device(name: str = "auto", deterministic: bool = False) -> torch.device:
    """The device named (``auto``: CUDA when available), with its speed or determinism settings applied.

    On CUDA the fast settings are cuDNN autotuning and TF32 matmuls, which make runs differ in the last
    bits. ``deterministic`` turns them off and asks PyTorch for deterministic kernels instead (slower; an
    operation without a deterministic kernel then raises). On CPU, runs are bit-identical for a seed and a
    thread count either way.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise NadError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NadError(f"--device {name}: CUDA is not available here")
    device = own_gpu(device)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible sums
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
    return device


def describe(device: torch.device) -> str:
    """Where a run's wall times were measured, for its records: the GPU's name, or the CPU and its threads."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (on the CPU) on ``device`` without stalling the host: to a GPU through pinned memory and an
    asynchronous copy, where a plain copy from pageable memory waits for the GPU's queue to drain. Used for
    values drawn on the CPU inside a loop (so that every device draws the same ones)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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
