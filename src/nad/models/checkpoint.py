"""Save and load classifiers without ever executing code from a model file.

``nad`` writes ``model.safetensors`` plus a JSON sidecar ``model.json`` that records the architecture, its
kwargs, the class count, the input size, the input normalisation and, when known, the attack. It also reads
foreign PyTorch files (``.pt``/``.pth``/``.tar``): a bare state_dict or one stored under ``state_dict``,
``model``, ``net`` or ``model_state_dict``, with ``module.`` prefixes stripped. Those are read with
``torch.load(weights_only=True)`` only, so a hostile pickle is refused instead of run.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from nad.errors import NadError
from nad.io import atomic_path, write_json
from nad.models.registry import create_model

FORMAT = "nad-model/1"
STATE_KEYS = ("state_dict", "model", "net", "model_state_dict")
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "gtsrb": ((0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)),
    "digits": ((0.5,), (0.5,)),
}


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]


def parse_normalize(value: str | None) -> Normalization | None:
    """``none``, a preset name (``cifar10``, ``imagenet``, ``gtsrb``), or ``MEAN,..;STD,..`` values."""
    if value is None or value.lower() == "none":
        return None
    if value.lower() in NORMALIZE_PRESETS:
        preset = NORMALIZE_PRESETS[value.lower()]
        return None if preset is None else Normalization(*preset)
    try:
        mean_text, std_text = value.split(";") if ";" in value else value.split("/")
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise NadError(
            f"--normalize {value!r}: expected none, {', '.join(NORMALIZE_PRESETS)}, or 'm1,m2,m3;s1,s2,s3'"
        ) from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise NadError(f"--normalize {value!r}: mean and std need the same length and positive std")
    return Normalization(mean, std)


@dataclass(frozen=True)
class ModelInfo:
    """What the sidecar records about a model, beyond its weights."""

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: Normalization | None = None
    attack: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @staticmethod
    def from_json(obj: dict[str, Any], where: str) -> ModelInfo:
        try:
            norm = obj.get("normalize")
            return ModelInfo(
                arch=str(obj["arch"]),
                num_classes=int(obj["num_classes"]),
                input_size=tuple(int(v) for v in obj["input_size"]),  # type: ignore[arg-type]
                arch_kwargs=dict(obj.get("arch_kwargs") or {}),
                normalize=None if not norm else Normalization(tuple(norm["mean"]), tuple(norm["std"])),
                attack=obj.get("attack"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NadError(f"{where}: malformed model sidecar ({exc!r})") from None


@dataclass
class Classifier:
    """A plain ``nn.Module`` and what is needed to feed it uint8 images."""

    module: nn.Module
    info: ModelInfo
    _affine: dict[torch.device, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def preprocess(self, x: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> float, normalised as the model was trained, in one fused multiply-add."""
        scale, shift = self._scale_shift(x.device)
        return torch.addcmul(shift, x.float(), scale)

    def _scale_shift(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``x / 255`` then ``(x - mean) / std`` folded into ``x * scale + shift``; cached per device."""
        if device not in self._affine:
            norm = self.info.normalize
            mean = torch.tensor(norm.mean if norm else (0.0,), dtype=torch.float32)
            std = torch.tensor(norm.std if norm else (1.0,), dtype=torch.float32)
            scale, shift = 1.0 / (255.0 * std), -mean / std
            self._affine[device] = (scale.view(1, -1, 1, 1).to(device), shift.view(1, -1, 1, 1).to(device))
        return self._affine[device]

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(self.preprocess(x))

    def to(self, device: torch.device | str) -> Classifier:
        self.module.to(device)
        return self

    def clone(self) -> Classifier:
        import copy

        return Classifier(copy.deepcopy(self.module), self.info, dict(self._affine))


def build_classifier(info: ModelInfo) -> Classifier:
    """A fresh module for ``info``, its 4-D weights in channels-last layout.

    Channels-last is the layout oneDNN and cuDNN run convolutions fastest in: on the 2-core CPU machine it makes
    WRN-16-1's fp32 training step 1.4x and its evaluation 2.5x faster (docs/performance.md). Convolutions follow
    the weights' layout, so inputs need no conversion; the arithmetic is the same up to summation order.
    """
    module = create_model(info.arch, info.num_classes, info.input_size[0], **info.arch_kwargs)
    return Classifier(module.to(memory_format=torch.channels_last), info)


def save_model(clf: Classifier, out_dir: str | Path, stem: str = "model") -> Path:
    """Write ``stem.safetensors`` and ``stem.json`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in clf.module.state_dict().items()}
    weights = out_dir / f"{stem}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json(out_dir / f"{stem}.json", clf.info.to_json())
    return weights


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise NadError(f"{path}: not a valid safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals and corrupt archives raise many types
        raise NadError(f"{path}: refused to load: {_load_failure(exc)}") from None
    return _find_state_dict(obj, path)


def _load_failure(exc: Exception) -> str:
    """A one-line reason for a refused ``torch.load``, naming the object a hostile pickle asked for."""
    text = str(exc)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text)
    if found:
        return f"it asks for {found.group(1)}, not a tensor (nad reads weights only and never runs code from a file)"
    if re.search(r"Unsupported operand|invalid load key|could not find|not a zip file|EOF", text, re.IGNORECASE):
        return "not a PyTorch weights file (corrupt, truncated, or another format)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"not a readable PyTorch weights file ({first[:200]})"


def _find_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                return _find_state_dict(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
        if tensors:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
    raise NadError(f"{path}: no state_dict found (looked for a dict of tensors, or under {', '.join(STATE_KEYS)})")


def _infer_info(state: dict[str, Tensor], arch: str | None, path: Path) -> ModelInfo:
    if arch is None:
        raise NadError(f"{path}: no nad sidecar (.json) beside it; say which architecture it is with --arch")
    convs = [v for v in state.values() if v.ndim == 4]
    linears = [v for v in state.values() if v.ndim == 2]
    in_channels = convs[0].shape[1] if convs else 3
    num_classes = linears[-1].shape[0] if linears else 10
    return ModelInfo(arch, int(num_classes), (int(in_channels), 32, 32))


def load_model(
    path: str | Path,
    arch: str | None = None,
    num_classes: int | None = None,
    normalize: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    input_size: tuple[int, int, int] | None = None,
) -> Classifier:
    """Load a classifier; the options override (or, for foreign files, supply) what the sidecar says."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise NadError(f"{path}: no such model file")
    state = _read_state_dict(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            info = ModelInfo.from_json(json.loads(sidecar.read_text()), str(sidecar))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NadError(f"{sidecar}: not valid JSON ({exc})") from None
    else:
        info = _infer_info(state, arch, path)
    info = replace(
        info,
        arch=arch or info.arch,
        num_classes=num_classes or info.num_classes,
        arch_kwargs=arch_kwargs if arch_kwargs is not None else info.arch_kwargs,
        input_size=input_size or info.input_size,
        normalize=parse_normalize(normalize) if normalize is not None else info.normalize,
    )
    clf = build_classifier(info)
    _load_weights(clf.module, state, path, info)
    return clf


def _load_weights(module: nn.Module, state: dict[str, Tensor], path: Path, info: ModelInfo) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise NadError(
            f"{path}: weights do not fit --arch {info.arch}: missing {_few(missing)}; unexpected {_few(unexpected)}"
            " (is --arch right?)"
        )
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        head_only = all(expected[w].shape[0] == info.num_classes != state[w].shape[0] for w in wrong)
        hint = " (is --num-classes right?)" if head_only else " (is --arch right?)"
        raise NadError(
            f"{path}: {len(wrong)} tensors have the wrong shape for --arch {info.arch} with {info.num_classes} "
            f"classes, e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}{hint}"
        )
    module.load_state_dict(state)


def _few(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
