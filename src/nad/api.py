"""The Python API behind the command line: train a (backdoored) model, erase a backdoor, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nad import distributed
from nad.attacks import parse_attack
from nad.attacks.base import Attack
from nad.data.dataset import ImageData
from nad.data.stream import StreamData
from nad.defenses.base import Defense, FineTunedStart
from nad.errors import NadError
from nad.metrics import Scores, evaluate
from nad.models.checkpoint import (
    Classifier,
    ModelInfo,
    Normalization,
    build_classifier,
    checked_arch_kwargs,
    is_user_code,
)
from nad.scan import ScanComparison, ScanConfig, scan
from nad.training import History, TrainConfig, load_profile, train

#: How ``nad train`` trains a model from scratch by default: the ``cosine`` profile (SGD + Nesterov, cosine
#: decay, crop and flip; ``nad/presets/profiles/cosine.yaml``).
SCRATCH = load_profile("cosine")


@dataclass
class TrainResult:
    model: Classifier
    history: History
    scores: Scores | None
    poisoned: torch.Tensor | None
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    attack: Attack | None = None


def train_model(
    data: ImageData | StreamData,
    arch: str,
    cfg: TrainConfig = SCRATCH,
    attack: Attack | None = None,
    test: ImageData | None = None,
    normalize: Normalization | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    quiet: bool = False,
    state_path: Path | None = None,
    workdir: Path | None = None,
) -> TrainResult:
    """Train ``arch`` from scratch on ``data``, poisoned by ``attack`` if given, and score it on ``test``.

    With ``state_path`` the run saves its state after every epoch and resumes from it when it exists.
    An attack that generates an artefact (a Trojan trigger) writes it into ``workdir``; the returned
    ``attack`` is the prepared one, whose spec is recorded with the model. Streamed ``data`` is poisoned
    as it is read (``StreamData.poisoned``).
    """
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if attack is not None and isinstance(data, ImageData):  # streamed data takes only attacks with nothing to prepare
        attack = attack.prepare(data, workdir)
    if normalize is not None and len(normalize.mean) not in (1, data.image_shape[0]):
        raise NadError(
            f"the normalisation has {len(normalize.mean)} values per statistic but {data.name} has "
            f"{data.image_shape[0]} channels"
        )
    if is_user_code(arch):  # recorded for information (loading needs --arch again): where, not where from
        file, _, name = arch.rpartition(":")
        arch = f"{Path(file).resolve()}:{name}"
    info = ModelInfo(
        arch,
        data.num_classes,
        data.image_shape,
        checked_arch_kwargs(arch_kwargs or {}, "--arch-kwargs"),
        normalize,
        attack.spec() if attack else None,
    )
    clf = build_classifier(info).to(data.device)
    poisoned = None
    if isinstance(data, StreamData) and attack is not None:
        data, poisoned = attack.poison_stream(data)
    elif attack is not None:
        result = attack.poison(data)
        data, poisoned = result.data, result.indices
    history = train(clf, data, cfg, desc=f"train {arch}", quiet=quiet, state_path=state_path)
    scores = evaluate(clf, test, attack) if test is not None else None
    return TrainResult(clf, history, scores, poisoned, time.perf_counter() - start, attack=attack)


@dataclass
class EraseResult:
    """The purified model, and the scores before, after, and after plain fine-tuning at the same budget."""

    model: Classifier
    before: Scores | None
    after: Scores | None
    finetune: Scores | None
    log: dict[str, Any]
    clean_size: int
    seconds: float
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    evidence: ScanComparison | None = None  # the trigger-agnostic scan before and after, when asked for
    finetuned: Classifier | None = None  # the plain fine-tuning baseline's model, when it ran


class CurveRecorder:
    """Records each defense phase's per-epoch losses and, when given a test subset, its ACC and ASR.

    With ``tensorboard`` (a folder) the same scalars are also logged there, as ``PHASE/NAME`` per epoch.
    """

    def __init__(
        self, test: ImageData | None = None, attack: Attack | None = None, tensorboard: Path | None = None
    ) -> None:
        self.test = test
        self.attack = attack
        self.curves: dict[str, list[dict[str, float]]] = {}
        self.writer = tensorboard_writer(tensorboard) if tensorboard is not None and distributed.is_main() else None

    def __call__(self, phase: str, epoch: int, losses: dict[str, float], model: Classifier) -> None:
        row: dict[str, float] = {"epoch": epoch + 1, **losses}
        if self.test is not None:
            scores = evaluate(model, self.test, self.attack)
            row["acc"] = scores.acc
            if scores.asr is not None:
                row["asr"] = scores.asr
        self.curves.setdefault(phase, []).append(row)
        if self.writer is not None:
            for name, value in row.items():
                if name != "epoch":
                    self.writer.add_scalar(f"{phase}/{name}", value, epoch + 1)
            self.writer.flush()

    def close(self, hparams: dict[str, Any] | None = None, metrics: dict[str, float | None] | None = None) -> None:
        """Close the TensorBoard log, first recording the run's hyperparameters with its final scores."""
        if self.writer is not None:
            scores = {k: v for k, v in (metrics or {}).items() if v is not None}
            if hparams:
                self.writer.add_hparams(hparams, scores, run_name=".")
            self.writer.close()


def hyperparameters(config: Any, prefix: str = "") -> dict[str, Any]:
    """A (nested) dataclass configuration flattened to TensorBoard's hparam values: numbers, strings, booleans."""
    import dataclasses

    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat |= hyperparameters(value, f"{prefix}{f.name}.")
        elif isinstance(value, bool | int | float | str):
            flat[prefix + f.name] = value
        elif isinstance(value, tuple | list):
            flat[prefix + f.name] = ",".join(map(str, value))
    return flat


def tensorboard_writer(folder: Path) -> Any:
    """A ``SummaryWriter`` for ``folder``; TensorBoard is an optional dependency (``pip install nad[tensorboard]``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NadError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(folder))


#: The fewest clean images, and classes, a defense can learn anything from.
MIN_CLEAN_IMAGES = 10


def select_clean(pool: ImageData, ratio: float, seed: int, num_classes: int | None = None) -> ImageData:
    """The defense's clean set D: a seeded, class-stratified ``ratio`` share of ``pool``.

    :func:`split_clean` also returns the images of ``pool`` that D leaves out.
    """
    return split_clean(pool, ratio, seed, num_classes)[0]


def split_clean(
    pool: ImageData, ratio: float, seed: int, num_classes: int | None = None
) -> tuple[ImageData, ImageData]:
    """``(D, rest)``: the defense's clean set, a seeded, class-stratified ``ratio`` share of ``pool``, and the
    images of ``pool`` it leaves out (empty when ``ratio`` is 1), for measurements the defense never sees.

    Refused when it holds fewer than ``MIN_CLEAN_IMAGES`` images or a single class; a warning names the
    classes of the model (``num_classes``, default the pool's) that it lacks, since the defense's
    fine-tuning then pushes the model away from them.
    """
    import math
    import warnings

    from nad.data.dataset import stratified_split

    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise NadError(f"--clean-ratio must lie in (0, 1], got {ratio}")
    if len(pool) == 0:
        raise NadError(f"{pool.name}: the clean data is empty")
    chosen, left = stratified_split(pool.y, ratio, seed)
    clean = pool.subset(chosen.to(pool.x.device), name=f"{pool.name} ({ratio:g} clean)")
    counts = clean.class_counts().tolist()
    present = sum(n > 0 for n in counts)
    if len(clean) < MIN_CLEAN_IMAGES or present < 2:
        raise NadError(
            f"the clean set ({ratio:g} of {len(pool)} images of {pool.name}) holds {len(clean)} image(s) of "
            f"{present} class(es): too few for a defense (at least {MIN_CLEAN_IMAGES} images of 2 classes)"
        )
    classes = num_classes or pool.num_classes
    missing = [c for c in range(classes) if c >= len(counts) or counts[c] == 0]
    if missing:
        warnings.warn(
            f"the clean set ({len(clean)} images) has no image of {len(missing)} of the model's {classes} classes "
            f"({_few_ints(missing)}); the defense cannot protect them",
            stacklevel=3,
        )
    return clean, pool.subset(left.to(pool.x.device), name=f"{pool.name} (held out of the clean set)")


def scan_images(clean: ImageData, rest: ImageData, seed: int) -> ImageData:
    """The images to scan a model with around a defense: as many as the clean set D, drawn from the clean
    images D leaves out when there are enough (the defense trains on D, which flatters a scan on D)."""
    return fixed_subset(rest, len(clean), seed + 1) if len(rest) >= len(clean) else clean


def _few_ints(values: list[int], n: int = 10) -> str:
    return ", ".join(map(str, values[:n])) + (f" and {len(values) - n} more" if len(values) > n else "")


def erase(
    model: Classifier,
    clean: ImageData,
    defense: Defense | None = None,
    test: ImageData | None = None,
    attack: Attack | None = None,
    baseline: bool = True,
    quiet: bool = False,
    curve_subset: int = 0,
    tensorboard: Path | None = None,
    scan_config: ScanConfig | None = None,
    scan_data: ImageData | None = None,
) -> EraseResult:
    """Purify ``model`` with ``defense`` (NAD by default) on the clean set ``clean``.

    With ``baseline``, plain fine-tuning runs at the same budget beside it, so the two can be compared.
    Scores are measured once before and once after, on ``test`` when given; with ``curve_subset`` > 0 also
    after every epoch, on a fixed, seeded subset of that many test images. ``tensorboard`` (a folder) logs
    the per-epoch curves there too.

    With ``scan_config`` the model is scanned for backdoor evidence (:func:`nad.scan.scan`) before and after
    the defense, on ``scan_data`` (default ``clean``; clean images the defense does not train on are better,
    since fine-tuning on the scanned images makes them harder to flip and so flatters the "after" scan).
    """
    from nad.defenses import NAD, FineTune
    from nad.defenses.settings import config_seed

    start = time.perf_counter()
    defense = defense if defense is not None else NAD()
    defense.check(model, clean)
    score = (lambda m: evaluate(m, test, attack)) if test is not None else (lambda m: None)
    before = score(model)
    scan_data = scan_data if scan_data is not None else clean
    scanned = scan(model, scan_data, scan_config, quiet=quiet) if scan_config is not None else None
    subset = fixed_subset(test, curve_subset) if test is not None and curve_subset else None
    recorder = CurveRecorder(subset, attack, tensorboard)
    finetune, baseline_seconds, fine_tuned, ft_model = None, None, None, None
    if baseline and not isinstance(defense, FineTune):
        budget = getattr(defense.config, "train", None)
        # The same budget as the defense's own schedule; a defense without one (ANP, I-BAU) is compared with
        # the default fine-tuning, run with the defense's seed.
        ft_cfg = budget if isinstance(budget, TrainConfig) else TrainConfig(seed=config_seed(defense.config))
        shared = shared_finetuning(defense, ft_cfg)
        ft_model, snapshot, baseline_seconds = run_baseline(
            model, clean, ft_cfg, shared.epochs if shared else None, quiet, recorder
        )
        finetune = score(ft_model)
        if shared is not None and snapshot is not None:
            fine_tuned = snapshot
    repair = defense.repair(model, clean, quiet=quiet, monitor=recorder, fine_tuned=fine_tuned)
    distributed.sync_state(repair.model.module)  # under torchrun: score and save the same model on every rank
    after = score(repair.model)
    if isinstance(defense, FineTune):
        finetune = after
    if baseline_seconds is not None:
        repair.log.setdefault("seconds", {})["finetune_baseline"] = baseline_seconds
        start_from = defense.fine_tuned_start()
        if start_from is not None:
            repair.log[f"{start_from.role}_from_baseline"] = fine_tuned is not None
    recorder.close(hyperparameters(defense.config), {"final/acc": after.acc, "final/asr": after.asr} if after else {})
    evidence = None
    if scanned is not None:
        evidence = ScanComparison(scanned, scan(repair.model, scan_data, scan_config, quiet=quiet))
    seconds = time.perf_counter() - start
    if isinstance(defense, FineTune):
        ft_model = repair.model
    return EraseResult(
        repair.model, before, after, finetune, repair.log, len(clean), seconds, recorder.curves, evidence, ft_model
    )


def shared_finetuning(defense: Defense, ft_cfg: TrainConfig) -> FineTunedStart | None:
    """The fine-tuning a defense starts from, when it is exactly a prefix of the baseline run.

    NAD's teacher and MCR's t = 1 end are plain fine-tuning with the defense's own schedule, seed and data
    order, which is also the baseline's. A run of ``epochs`` epochs is then the baseline at that epoch: always
    when it is the whole run, and for shorter runs with a step schedule, whose learning rate at an epoch does
    not depend on the run's length. Taking a snapshot saves those epochs and changes no result.
    """
    start = defense.fine_tuned_start()
    if start is None or start.config != ft_cfg or not 0 < start.epochs <= ft_cfg.epochs:
        return None
    if start.epochs < ft_cfg.epochs and ft_cfg.optim.schedule != "step":
        return None
    return start


def run_baseline(
    model: Classifier,
    clean: ImageData,
    cfg: TrainConfig,
    snapshot_epochs: int | None,
    quiet: bool,
    recorder: CurveRecorder,
) -> tuple[Classifier, Classifier | None, float]:
    """Plain fine-tuning at the defense's budget; optionally a copy of the model after ``snapshot_epochs``."""
    from nad.defenses import FineTune

    snapshot: list[Classifier] = []

    def monitor(phase: str, epoch: int, losses: dict[str, float], current: Classifier) -> None:
        recorder(phase, epoch, losses, current)
        if snapshot_epochs is not None and epoch + 1 == snapshot_epochs:
            snapshot.append(current.clone())

    ft = FineTune(cfg).repair(model, clean, quiet=quiet, monitor=monitor)
    return ft.model, (snapshot[0] if snapshot else None), ft.log["seconds"]["finetune"]


def fixed_subset(data: ImageData, size: int, seed: int = 0) -> ImageData:
    """A seeded random subset of ``size`` images (all of them if fewer), the same on every call."""
    if size >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
    return data.subset(torch.sort(index).values.to(data.x.device))


def attention_sample(test: ImageData, attack: Attack | None, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` fixed non-target test images and their triggered versions (none without an attack)."""
    pool = test if attack is None else test.subset(torch.nonzero(test.y != attack.target).flatten())
    clean = fixed_subset(pool, count).x
    return clean, attack.apply(clean) if attack is not None else clean[:0]


def save_erase_outputs(
    out: Path,
    original: Classifier,
    result: EraseResult,
    summary: dict[str, Any],
    test: ImageData | None,
    attack: Attack | None,
) -> None:
    """Write the purified model, ``results.json``, ``attention.png`` (with test data), ``report.html``, and
    with a scan ``trigger-before-class-K.png`` / ``trigger-after-class-K.png`` for each flagged class."""
    from nad.defenses.nad import NADConfig, resolve_layers
    from nad.io import write_json
    from nad.models.checkpoint import save_model
    from nad.report import write_erase_report
    from nad.viz import attention_figure, evidence_figure

    save_model(result.model, out)
    write_json(out / "results.json", {**summary, "curves": result.curves})
    figure = None
    if test is not None:
        clean, triggered = attention_sample(test, attack)
        layers = result.log.get("layers") or resolve_layers(original, original.preprocess(clean[:2]), NADConfig())[0]
        name = summary.get("config", {}).get("defense", "after")
        rows = [("before", original, layers), (name, result.model, layers)]
        if result.finetuned is not None and result.finetuned is not result.model:
            rows.append(("finetune", result.finetuned, layers))
        figure = attention_figure(rows, clean, triggered, out / "attention.png", test.classes)
    if result.evidence is not None:
        for when, found in (("before", result.evidence.before), ("after", result.evidence.after)):
            for c in found.flagged:
                evidence_figure(found, c, out / f"trigger-{when}-class-{c}.png")
    write_erase_report(out, summary, result.curves, figure)


def attack_for(spec: str | None, data: ImageData) -> Attack | None:
    if not spec:
        return None
    attack = parse_attack(spec)
    attack.check(data.num_classes, data.image_shape)
    return attack


def model_attack(override: str | None, clf: Classifier, model_path: str, data: ImageData) -> Attack | None:
    """The ``--attack`` given, else the model's recorded one with its files found beside the model."""
    if override:
        return attack_for(override, data)
    attack = attack_for(clf.info.attack, data)
    path = Path(model_path)
    return attack.rebase(path if path.is_dir() else path.parent) if attack else None


#: The fewest test images, and classes, whose scores mean something.
MIN_TEST_IMAGES = 10


def check_fits(clf: Classifier, data: ImageData, role: str = "test") -> None:
    """Refuse data the model cannot take (classes, channels, image size) or too little to score on.

    A foreign model's image size is unknown (0 x 0) until now: it is taken from the data."""
    if data.num_classes > clf.info.num_classes:
        raise NadError(
            f"{data.name} has {data.num_classes} classes but the model predicts {clf.info.num_classes} "
            "(is --num-classes right?)"
        )
    channels, height, width = clf.info.input_size
    if data.image_shape[0] != channels:
        raise NadError(f"{data.name} has {data.image_shape[0]} channels but the model expects {channels}")
    if height == 0:
        clf.info = replace(clf.info, input_size=data.image_shape)
    elif data.image_shape[1:] != (height, width):
        h, w = data.image_shape[1:]
        raise NadError(f"{data.name} holds {h}x{w} images but the model was trained on {height}x{width}")
    if role == "test":
        present = int((data.class_counts() > 0).sum())
        if len(data) < MIN_TEST_IMAGES or present < 2:
            raise NadError(
                f"{data.name}: {len(data)} image(s) of {present} class(es) are too few to score a model on "
                f"(at least {MIN_TEST_IMAGES} images of 2 classes)"
            )
