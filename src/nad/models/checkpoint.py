"""Save and load classifiers without ever executing code from a model file.

``nad`` writes ``model.safetensors`` plus a JSON sidecar ``model.json`` that records the architecture, its
kwargs, the class count, the input size, the input normalisation and, when known, the attack. It also reads
foreign PyTorch files (``.pt``/``.pth``/``.tar``): a bare state_dict or one stored under ``state_dict``,
``model``, ``net`` or ``model_state_dict``, with ``module.`` prefixes stripped. Those are read with
``torch.load(weights_only=True)`` only, so a hostile pickle is refused instead of run.
"""

from __future__ import annotations

import json
import math
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
#: Limits on what a sidecar or option may ask for, far above any model nad is meant for: they keep a hostile
#: sidecar from asking for a model of terabytes before a single weight has been compared.
MAX_CLASSES = 100_000
MAX_CHANNELS = 64
MAX_SIDE = 4096
MAX_PARAMETERS = 2_000_000_000
MAX_SIDECAR_BYTES = 1_000_000
#: Arguments every architecture receives from nad itself; an ``arch_kwargs`` may not repeat them.
RESERVED_KWARGS = ("num_classes", "in_channels")
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
    return checked_normalization(mean, std, f"--normalize {value!r}")


def checked_normalization(mean: Any, std: Any, where: str) -> Normalization:
    """``Normalization(mean, std)`` if both are equally long lists of finite numbers and every std is > 0."""
    values = []
    for name, seq in (("mean", mean), ("std", std)):
        if not isinstance(seq, list | tuple) or not seq or len(seq) > MAX_CHANNELS:
            raise NadError(f"{where}: {name} must be a list of 1 to {MAX_CHANNELS} numbers, got {seq!r:.80}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in seq):
            raise NadError(f"{where}: {name} must hold finite numbers, got {list(seq)!r:.80}")
        values.append(tuple(float(v) for v in seq))
    mean, std = values
    if len(mean) != len(std):
        raise NadError(f"{where}: mean has {len(mean)} values but std has {len(std)}")
    if any(v <= 0 for v in std):
        raise NadError(f"{where}: every std must be > 0, got {list(std)} (a zero std makes every input infinite)")
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
    def from_json(obj: Any, where: str) -> ModelInfo:
        """Read a sidecar, checking every value's type and range (a sidecar may come from an attacker)."""
        if not isinstance(obj, dict):
            raise NadError(f"{where}: a model sidecar must be a JSON object, got {type(obj).__name__}")
        if obj.get("format", FORMAT) != FORMAT:
            raise NadError(f"{where}: unknown format {obj.get('format')!r:.60} (this nad reads {FORMAT})")
        arch = obj.get("arch")
        if not isinstance(arch, str) or not arch:
            raise NadError(f"{where}: 'arch' must be a non-empty string, got {arch!r:.60}")
        num_classes = checked_int(obj.get("num_classes"), f"{where}: 'num_classes'", 1, MAX_CLASSES)
        size = obj.get("input_size")
        if not isinstance(size, list) or len(size) != 3:
            raise NadError(f"{where}: 'input_size' must be [channels, height, width], got {size!r:.60}")
        channels = checked_int(size[0], f"{where}: input channels", 1, MAX_CHANNELS)
        height, width = (checked_int(v, f"{where}: input size", 1, MAX_SIDE) for v in size[1:])
        norm = obj.get("normalize")
        if norm is not None and not isinstance(norm, dict):
            raise NadError(f'{where}: \'normalize\' must be null or {{"mean": [...], "std": [...]}}')
        normalize = checked_normalization(norm.get("mean"), norm.get("std"), f"{where}: normalize") if norm else None
        attack = obj.get("attack")
        if attack is not None and not isinstance(attack, str):
            raise NadError(f"{where}: 'attack' must be an attack spec string or null, got {attack!r:.60}")
        kwargs = checked_arch_kwargs(obj.get("arch_kwargs") or {}, f"{where}: 'arch_kwargs'")
        return ModelInfo(arch, num_classes, (channels, height, width), kwargs, normalize, attack)


def checked_int(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise NadError(f"{what} must be an integer in [{low}, {high}], got {value!r:.60}")
    return value


def checked_arch_kwargs(value: Any, where: str) -> dict[str, Any]:
    """Keyword arguments for an architecture: a JSON object of plain values, not repeating nad's own."""
    if not isinstance(value, dict):
        raise NadError(f'{where} must be a JSON object such as {{"depth": 28}}, got {value!r:.60}')
    for key, item in value.items():
        if key in RESERVED_KWARGS:
            raise NadError(f"{where}: {key} is set by nad (use --num-classes / the data), not in arch_kwargs")
        if not isinstance(item, str | int | float | bool) and item is not None:
            raise NadError(f"{where}: {key} must be a number, string, boolean or null, got {item!r:.60}")
        if isinstance(item, float) and not math.isfinite(item):
            raise NadError(f"{where}: {key} must be finite, got {item}")
    return dict(value)


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

    def preprocess_float(self, x01: Tensor) -> Tensor:
        """Float images in [0, 1] (N, C, H, W) -> model inputs, normalised exactly as ``preprocess`` does
        uint8 ones: the entry for attacks and defenses that optimise pixels (Trojan, CL, I-BAU)."""
        scale, shift = self._scale_shift(x01.device)
        return torch.addcmul(shift, x01, scale * 255.0)

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


def build_classifier(info: ModelInfo, expected: dict[str, Tensor] | None = None) -> Classifier:
    """A fresh module for ``info``, its 4-D weights in channels-last layout.

    The module is first built on the ``meta`` device, which allocates nothing: its size is checked against
    ``MAX_PARAMETERS`` and, with ``expected`` (weights read from a file), its tensor names and shapes against
    those weights, so a sidecar cannot make nad allocate a model larger than the file that claims it.

    Channels-last is the layout oneDNN and cuDNN run convolutions fastest in: on the 2-core CPU machine it makes
    WRN-16-1's fp32 training step 1.4x and its evaluation 2.5x faster (docs/performance.md). Convolutions follow
    the weights' layout, so inputs need no conversion; the arithmetic is the same up to summation order.
    """
    with torch.device("meta"):
        shell = create_model(info.arch, info.num_classes, info.input_size[0], **info.arch_kwargs)
    count = sum(p.numel() for p in shell.parameters())
    if count > MAX_PARAMETERS:
        raise NadError(f"--arch {info.arch} with {info.arch_kwargs} has {count:,} parameters, over nad's limit")
    if expected is not None:
        check_weights(shell.state_dict(), expected, info)
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
    # The image size is not in the weights: 0 x 0 means "unknown", filled in from the data it is used with.
    return ModelInfo(arch, int(num_classes), (int(in_channels), 0, 0))


def load_model(
    path: str | Path,
    arch: str | None = None,
    num_classes: int | None = None,
    normalize: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    input_size: tuple[int, int, int] | None = None,
) -> Classifier:
    """Load a classifier; the options override (or, for foreign files, supply) what the sidecar says.

    Code is imported only when the caller names it (``arch="file.py:Class"``): a sidecar that names a Python
    file is refused unless ``arch`` is given, so a model folder can never make nad run code. A folder with a
    Hugging Face style ``config.json`` instead of a sidecar is read with :func:`read_hub_config`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise NadError(f"{path}: no such model file")
    state = _read_state_dict(path)
    sidecar = path.with_suffix(".json")
    hub_config = path.parent / "config.json"
    if sidecar.is_file():
        info = read_sidecar(sidecar)
    elif hub_config.is_file():
        info = read_hub_config(hub_config, arch)
    else:
        info = _infer_info(state, arch, path)
    if arch is None and is_user_code(info.arch):
        raise NadError(
            f"{sidecar}: names the Python file {info.arch!r}; nad never imports code because a file names it. "
            f"If you trust that file, pass --arch {info.arch} yourself"
        )
    if num_classes is not None:
        checked_int(num_classes, "--num-classes", 1, MAX_CLASSES)
    info = replace(
        info,
        arch=arch or info.arch,
        num_classes=num_classes or info.num_classes,
        arch_kwargs=checked_arch_kwargs(arch_kwargs, "--arch-kwargs") if arch_kwargs is not None else info.arch_kwargs,
        input_size=input_size or info.input_size,
        normalize=parse_normalize(normalize) if normalize is not None else info.normalize,
    )
    if info.normalize is not None and len(info.normalize.mean) not in (1, info.input_size[0]):
        raise NadError(
            f"{path}: the normalisation has {len(info.normalize.mean)} values per statistic but the model takes "
            f"{info.input_size[0]} channels"
        )
    clf = build_classifier(info, expected=state)
    clf.module.load_state_dict(state)
    return clf


#: Names a Hugging Face style ``config.json`` may give its architecture: a timm model name, nothing else.
HUB_ARCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
#: timm architectures nad builds itself, with the same parameter names and forward pass (``nad.models.resnet``),
#: so a folder timm publishes for them needs no timm.
NATIVE_TIMM_ARCHS = ("resnet18", "resnet34", "resnet50")


def read_hub_config(path: Path, arch: str | None) -> ModelInfo:
    """A Hugging Face style folder (``config.json`` + ``model.safetensors``, as timm publishes models): the
    architecture (unless ``arch`` is given: nad's own for :data:`NATIVE_TIMM_ARCHS`, else ``timm:`` +
    ``architecture``), the class count, and from ``pretrained_cfg`` the input size and the normalisation.
    Every value is checked; nothing is imported."""
    where = str(path)
    obj = read_small_json(path, "model configuration")
    if not isinstance(obj, dict):
        raise NadError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    name = obj.get("architecture")
    if arch is None:
        if not isinstance(name, str) or not HUB_ARCH.fullmatch(name):
            raise NadError(
                f"{where}: no timm 'architecture' name (got {name!r:.60}); say which architecture it is with --arch"
            )
        base = name.partition(".")[0]  # timm's NAME.PRETRAINED_TAG names weights, not another architecture
        arch = base if base in NATIVE_TIMM_ARCHS else f"timm:{name}"
    num_classes = checked_int(obj.get("num_classes"), f"{where}: 'num_classes'", 1, MAX_CLASSES)
    cfg = obj.get("pretrained_cfg")
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise NadError(f"{where}: 'pretrained_cfg' must be a JSON object")
    size = cfg.get("input_size", [obj.get("in_chans", 3), 0, 0])
    if not isinstance(size, list) or len(size) != 3:
        raise NadError(f"{where}: 'pretrained_cfg.input_size' must be [channels, height, width], got {size!r:.60}")
    channels = checked_int(size[0], f"{where}: input channels", 1, MAX_CHANNELS)
    height, width = (checked_int(v, f"{where}: input size", 0, MAX_SIDE) for v in size[1:])
    normalize = None
    if "mean" in cfg or "std" in cfg:
        normalize = checked_normalization(cfg.get("mean"), cfg.get("std"), f"{where}: pretrained_cfg")
    return ModelInfo(arch, num_classes, (channels, height, width), {}, normalize)


def is_user_code(arch: str) -> bool:
    """Whether ``arch`` names a Python file (``file.py:Class``) rather than a registered architecture."""
    return ".py" in arch or "/" in arch or "\\" in arch


def read_sidecar(sidecar: Path) -> ModelInfo:
    return ModelInfo.from_json(read_small_json(sidecar, "model sidecar"), str(sidecar))


def read_small_json(path: Path, what: str) -> Any:
    """A JSON file of at most ``MAX_SIDECAR_BYTES``, without NaN or infinity literals."""
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise NadError(f"{path}: {path.stat().st_size:,} bytes, too large for a {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise NadError(f"{path}: not valid JSON ({str(exc)[:100]})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_weights(expected: dict[str, Tensor], state: dict[str, Tensor], info: ModelInfo) -> None:
    """Refuse weights whose names, shapes or kinds do not fit the model, or that are not finite."""
    path = f"weights for --arch {info.arch}"
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise NadError(f"{path} do not fit: missing {_few(missing)}; unexpected {_few(unexpected)} (is --arch right?)")
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        head_only = all(expected[w].shape[0] == info.num_classes != state[w].shape[0] for w in wrong)
        hint = " (is --num-classes right?)" if head_only else " (is --arch right?)"
        raise NadError(
            f"{len(wrong)} tensors have the wrong shape for --arch {info.arch} with {info.num_classes} "
            f"classes, e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}{hint}"
        )
    for k, want in expected.items():
        got = state[k]
        if want.is_floating_point() != got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
            raise NadError(f"{k} is {got.dtype} but the model holds {want.dtype} there: not weights of this model")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NadError(f"{len(bad)} tensors hold NaN or inf, e.g. {bad[0]}: these weights cannot be scored or purified")
    negative = [k for k, v in state.items() if k.endswith("running_var") and bool((v < 0).any())]
    if negative:
        raise NadError(f"{negative[0]} has negative entries: a variance cannot be negative")


def _few(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
