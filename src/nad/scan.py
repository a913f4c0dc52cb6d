"""Trigger-agnostic backdoor evidence from a small clean set, per class: is a backdoor there, and which class?

Six measures (five on by default), each turned into an anomaly index across the classes with the median
absolute deviation (MAD), as Neural Cleanse does:

- **Trigger inversion** (Neural Cleanse; Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor
  Attacks in Neural Networks", IEEE S&P 2019; github.com/bolunwang/backdoor). For each target class t, the
  smallest mask m (H x W, in [0, 1]) and pattern p (C x H x W) such that ``(1 - m) * x + m * p`` sends clean
  images x to t: minimise ``CE(f(x'), t) + lambda_t * |m|_1`` with Adam (lr 0.1, betas 0.5 / 0.9), starting
  from ``lambda = 1e-3`` and multiplying it by 1.5 after ``patience`` steps at >= 99% success, dividing it
  by 1.5 ** 1.5 after ``patience`` steps below (the reference's dynamic cost). The L1 norm of the smallest
  mask that reached 99% is the class's score; a class whose norm lies more than ``threshold`` (2) MADs
  *below* the median is flagged: a backdoor is a shortcut to its target, so its trigger is small.
- **Universal adversarial perturbation** at a fixed L-inf budget (``eps`` 8/255), per target class: the
  inner maximisation of I-BAU (Zeng et al., ICLR 2022) and SAU (Wei et al., NeurIPS 2023) asked per class.
  PGD with signed steps finds one perturbation for all clean images; its success rate on held-out clean
  images of the other classes is the class's score, and a class more than ``threshold`` MADs *above* the
  median is flagged. This covers full-image triggers (Blend, SIG, WaNet) that a small mask cannot express.
- **Adversarial neuron perturbation**, per target class (after ANP: Wu & Wang, "Adversarial Neuron
  Perturbations Expose Backdoor Models", NeurIPS 2021, who observe that a backdoored model whose neurons are
  perturbed tends to predict the target class). Every affine BatchNorm gets a multiplicative noise on its
  weight and bias within ``neuron_eps`` (0.03), as ANP's, but one noise per target class, found by
  ``neuron_steps`` (5) signed steps of ``neuron_step`` (0.0075) from zero towards that class on random clean
  images. Its success rate on held-out clean images of the other classes is the class's score, flagged as the
  universal perturbation's (log-odds, above the median). It perturbs the model, not the image, so it can see
  a backdoor whose trigger is neither a small patch nor a small additive pattern: WaNet's warp, on
  ``zoo/standard-wanet``. A model without an affine BatchNorm gets no score from it (every index 0).
- **Stripe perturbations** (ours; off by default: ``stripe_eps=STRIPE_EPS`` or ``nad scan --stripes``), per
  target class: two more universal perturbations, one value per column and channel (``(C, 1, W)``, the same
  down every row) and one per row, within ``stripe_eps`` (24/255), by ``uap_steps`` signed steps of a quarter
  of it; the better success rate of the two is the class's score, flagged as the universal perturbation's.
  A full-image trigger such as SIG's sinusoid (20/255 at training) needs a budget at which a perturbation
  free in every pixel reaches every class of these models, so its target has no contrast; a stripe has 96
  numbers, too few for the fine-grained directions that reach any class, and SIG's trigger is one. It names
  SIG's target on ``zoo/standard-sig`` and ``zoo/reference-sig``, which the other three miss; but it assumes
  an axis-aligned, one-dimensional pattern, and on the zoo it flags non-target classes (four backdoored
  models, and a clean one after NAD) with indices above those of the SIG targets: it cannot tell the two
  apart, so it stays off by default (docs/scan.md). Its budget was read off four models of ``zoo/`` (standard
  and reference clean and SIG) at 16, 24 and 32/255 (``benchmarks.stripe_probe``): at 16/255 one SIG target
  stayed under the threshold, at 32/255 a class of a clean model nearly crossed it. A class it alone flags
  has no trigger for ``nc`` to unlearn (``ScanResult.trigger_flagged``), as with the neuron perturbation.
- **Warp perturbations** (ours, after WaNet's trigger family: Nguyen & Tran, ICLR 2021), per target class: one
  smooth warp, ``warp_grid`` x ``warp_grid`` (4, WaNet's k) control offsets within ``warp_bound`` (0.5)
  pixels in each axis, upsampled bicubic to the image and applied by bilinear ``grid_sample`` as WaNet does,
  found by ``uap_steps`` signed steps of a quarter of the bound on random clean images; its success rate on
  held-out clean images of the other classes, flagged as the universal perturbation's. A warp of half a
  pixel changes each pixel by little in a smooth image but by much at edges, so an additive budget cannot
  mimic it; and with 32 numbers it cannot reach an arbitrary class (on the clean zoo models at most 8-11% of
  images), but WaNet's target it can: 100% and 87% on ``zoo/standard-wanet`` and ``zoo/reference-wanet``,
  the second of which every other measure misses. Its budget was read off those two models and the two
  clean ones at 0.5, 1 and 2 pixels (``benchmarks.warp_probe``; contrast falls with the bound), so those four
  rows are not independent evidence. Its success rates enter the log-odds at no less than 5%
  (``WARP_RATE_FLOOR``; the other measures': 0.5%): on the clean digits model of the tests, a development
  model, one class reached by 4.0% of held-out images against a median of 0% scored 2.12 without it. It
  draws from its own generator, so turning it off (``warp_bound=0``) or the stripes on changes no other
  measure. A class it alone flags has no input trigger for ``nc`` to unlearn.

- **Tones, corroborated by stripes** (ours, after SIG's trigger family: Barni et al., ICIP 2019), per target
  class: of 192 pure tones at ``tone_amplitude`` (24/255, the stripes' budget), ``amplitude * sin(2 pi j f / n
  + phase)`` down the columns or along the rows, f = 1 .. 12 periods, eight phases, the same in every channel,
  the one that sends most of ``batch`` x K random clean images of other classes to t (forward passes only;
  its own generator); its success rate on held-out clean images of other classes, indexed as the warp's. A
  tone has three numbers, so it reaches few classes; but a fine texture of rows is a natural "sink" of several
  zoo models (class 4, deer: 41-76% of images), so a tone alone raised false flags, and so did the stripes
  alone, on other classes. A class is flagged only where *both* stand out: its index is the smaller of its
  tone index and its stripe index (the stripes as above, within the same budget; a tone is one stripe
  pattern). Where no tone index passes the threshold the stripes cannot change the verdict and are not drawn
  (for time). The rule, both at 24/255, was read off the 18 models of ``zoo/`` (``benchmarks.tone_probe``,
  ``benchmarks.stripe_probe``; on them it flags SIG's targets and one class the other measures flag
  already), so those rows are not independent evidence; models trained afterwards for the purpose, with
  other seeds, targets and frequencies, are (docs/scan.md). A class it alone flags has no trigger for ``nc``.

The anomaly indices are taken on log mask norms and on the log-odds of the success rates, each with a floor
under the MAD (``NC_FLOOR`` 0.25; ``UAP_FLOOR`` 1.0, for every success rate): a trigger half the median's size
is the same evidence whatever the median, and a class reached 40% of the time against a median of 20% is less
remarkable than 8% against 4%. Neural Cleanse takes the MAD of the raw L1 norms with no floor; on the raw scale the mask
of the reference-trained BadNets model in ``zoo/`` scored 2.05, on the log scale 3.6. The floors were
set on development models, not the zoo: NC_FLOOR on a clean digits model (raw-scale NC flagged two of its classes,
whose masks were 1.6 times smaller than the median), UAP_FLOOR on the clean reference model of ``zoo/``
(two natural "sink" classes, reached by 30% and 35% of perturbed images against a median of 16%; Moosavi-
Dezfooli et al., CVPR 2017, describe such dominant labels of universal perturbations). The neuron
perturbation's budget was not set that way: it was read off seven models of ``zoo/`` (standard clean, BadNets,
SIG, WaNet; reference clean, SIG, WaNet) at two budgets, 0.03 and 0.06 (at 0.06 every class of every model is
reached by 75-100% of the images, so nothing stands out). On those seven models it is not independent
evidence; docs/scan.md keeps them apart from the models trained later.

A class is flagged where any measure's index exceeds ``threshold`` (2, Neural Cleanse's, for one measure); the
verdict calls it "backdoor suspected" where its strongest index reaches ``strong`` (3) and "weak backdoor
evidence" under that. Fifty indices (five measures, ten classes) put one over 2 by chance on 68% of clean
models if they were independent and normal, and one over 3 on 7%; measured, clean models trained without
augmentation were flagged at 2.02-3.09 (5 of 9; docs/scan.md), and SIG's zoo targets scored 2.41-2.60: the 3
grades evidence, it does not divide sinks from backdoors.

Deviations from the reference code, for speed (one scan of a 10-class WRN-16-1: 47 s in fp32, 25 s in bf16 on
2 idle CPU cores; ``python -m benchmarks.scan``): all classes are optimised at once in one batch (the
reference runs one class after another), for ``steps`` steps of ``batch`` images per class (the reference: up
to 80 epochs over its clean set), and the cost is adjusted per step rather than per epoch. The mask and
pattern are parametrised with tanh as in the reference. The model runs in channels-last layout (the same
arithmetic) and, with ``precision="bf16"``, under bf16 autocast.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from nad.attacks.wanet import identity_grid
from nad.attention import batch_norms
from nad.data.dataset import ImageData
from nad.errors import NadError
from nad.models.checkpoint import Classifier
from nad.training import Precision, autocast

MAD_SCALE = 1.4826  # makes the MAD of normally distributed values an estimate of their standard deviation
#: Floors of the MAD (see :func:`anomaly_index`), on the scales the indices use: log mask norm, logit success.
NC_FLOOR = 0.25  # a mask must be e**(2 * 0.25) ~ 1.65 times smaller than the median one, however alike the rest
UAP_FLOOR = 1.0  # a class must be e**(2 * 1.0) ~ 7.4 times likelier to be reached (in odds) than the median one
STRIPE_EPS = 24 / 255  # the stripe perturbations' budget when they are on (``nad scan --stripes``)
#: The warp measure's success rates are taken as at least 5% (and at most 95%) on the log-odds scale: most
#: classes are reached by 0-3% of some 230 held-out images, where a few images move the log-odds by 2 MADs.
WARP_RATE_FLOOR = 0.05
TONE_FREQUENCIES = 12  # the tones' highest frequency, in periods across the image (SIG's: 6)
TONE_PHASES = 8  # phases per frequency, in equal parts of a turn
#: The index at which a flag reads "backdoor suspected" rather than "weak evidence": with five measures of ten
#: classes, chance alone (normal indices) passes the threshold of 2 somewhere on 68% of clean models and 3 on 7%.
STRONG = 3.0


@dataclass(frozen=True)
class ScanConfig:
    """The scan's parameters; the defaults are the references' where they state one (see the module doc)."""

    steps: int = 150
    batch: int = 24
    lr: float = 0.1
    init_cost: float = 1e-3
    cost_factor: float = 1.5
    patience: int = 5
    success: float = 0.99
    eps: float = 8 / 255
    uap_steps: int = 20
    uap_step: float = 2 / 255
    holdout: int = 256
    # Added after bench cells of ``nc`` were recorded; they change nothing ``nc`` does (see ``trigger_flagged``).
    neuron_eps: float = field(default=0.03, metadata={"hash": "when-changed"})
    neuron_steps: int = field(default=5, metadata={"hash": "when-changed"})
    neuron_step: float = field(default=0.0075, metadata={"hash": "when-changed"})
    # Off by default (0); ``STRIPE_EPS`` turns it on. Its step is a quarter of it, its steps ``uap_steps``.
    stripe_eps: float = field(default=0.0, metadata={"hash": "when-changed"})
    # The warp measure: control offsets within ``warp_bound`` pixels on a ``warp_grid`` square grid (0: off).
    warp_bound: float = field(default=0.5, metadata={"hash": "when-changed"})
    warp_grid: int = field(default=4, metadata={"hash": "when-changed"})
    # The tones: pure sinusoids of this amplitude, corroborated by stripes of the same budget (0: off).
    tone_amplitude: float = field(default=STRIPE_EPS, metadata={"hash": "when-changed"})
    threshold: float = 2.0
    # A flag whose strongest index reaches this is "backdoor suspected"; one under it, "weak evidence" (module doc):
    # at or under ``threshold``, every flag is suspected.
    strong: float = field(default=STRONG, metadata={"hash": "when-changed"})
    seed: int = 0
    precision: Precision = "fp32"
    channels_last: bool = True

    def __post_init__(self) -> None:
        if min(self.steps, self.batch, self.uap_steps, self.holdout, self.patience, self.neuron_steps) < 1:
            raise NadError("scan: steps, batch, uap_steps, neuron_steps, holdout and patience must be >= 1")
        if not (self.neuron_eps > 0 and self.neuron_step > 0):
            raise NadError("scan: need neuron_eps > 0 and neuron_step > 0")
        if not 0 <= self.stripe_eps <= 1:
            raise NadError(f"scan: stripe_eps must lie in [0, 1] (0: off), got {self.stripe_eps}")
        if not 0 <= self.tone_amplitude <= 1:
            raise NadError(f"scan: tone_amplitude must lie in [0, 1] (0: off), got {self.tone_amplitude}")
        if not (0 <= self.warp_bound <= 8 and self.warp_grid >= 2):
            raise NadError(f"scan: need 0 <= warp_bound <= 8 pixels (0: off) and warp_grid >= 2, got {self.warp_bound}")
        if not (0 < self.eps <= 1 and 0 < self.uap_step <= 1 and 0 < self.success <= 1 and self.threshold > 0):
            raise NadError("scan: need 0 < eps, uap_step, success <= 1 and threshold > 0")
        if self.precision not in ("fp32", "bf16"):
            raise NadError(f"scan: precision must be fp32 or bf16, got {self.precision!r}")


PICTURES = ("masks", "patterns", "perturbations", "warps")  # tensors of a ScanResult, left out of its JSON


@dataclass
class ScanResult:
    """Per class: the inverted trigger's mask norm, the UAP and the neuron perturbation's success rates (%),
    their anomaly indices, and which classes are flagged. ``masks``/``patterns`` hold the inverted triggers
    (for pictures and for the ``nc`` defense's unlearning), ``perturbations`` the universal perturbations
    (K, C, H, W), in [0, 1] pixels."""

    norms: list[float]
    reached: list[bool]
    uap_success: list[float]
    nc_index: list[float]
    uap_index: list[float]
    flagged: list[int]
    threshold: float
    seconds: float = 0.0
    masks: Tensor | None = field(default=None, repr=False)
    patterns: Tensor | None = field(default=None, repr=False)
    perturbations: Tensor | None = field(default=None, repr=False)
    neuron_success: list[float] = field(default_factory=list)
    neuron_index: list[float] = field(default_factory=list)
    stripe_success: list[float] = field(default_factory=list)
    stripe_index: list[float] = field(default_factory=list)
    warp_success: list[float] = field(default_factory=list)
    warp_index: list[float] = field(default_factory=list)
    warps: Tensor | None = field(default=None, repr=False)  # the warp measure's control offsets (K, 2, g, g), pixels
    tone_success: list[float] = field(default_factory=list)
    tone_index: list[float] = field(default_factory=list)
    tone_best: list[int] = field(default_factory=list)  # per class, the best tone's place in :func:`tones`
    periodic_index: list[float] = field(default_factory=list)  # per class, the smaller of its tone and stripe index
    stripes_alone: bool = False  # the stripes flag on their own (``stripe_eps`` > 0), not only with the tones
    strong: float = STRONG  # the index from which a flag reads "backdoor suspected" (``ScanConfig.strong``)

    @property
    def trigger_flagged(self) -> list[int]:
        """The flagged classes for which the scan found an input trigger (by trigger inversion or universal
        perturbation): a class flagged by the neuron, stripe, warp or tone perturbation alone has none to unlearn."""
        return [c for c in self.flagged if max(self.nc_index[c], self.uap_index[c]) > self.threshold]

    @property
    def suspected(self) -> list[int]:
        """The flagged classes whose strongest index reaches ``strong``: stronger evidence than most clean models'
        flags, not proof (a clean model's sink reached 3.09; module doc). A class no stored index flags (an older
        scan) counts as suspected."""
        return [c for c in self.flagged if (strongest := self.strongest(c)) is None or strongest[1] >= self.strong]

    @property
    def verdict(self) -> str:
        if not self.flagged:
            return "no class stands out"
        suspected = self.suspected
        weak = [c for c in self.flagged if c not in suspected]
        labelled = (("backdoor suspected", suspected), ("weak backdoor evidence", weak))
        parts = [f"{label}: " + ", ".join(map(self.describe, classes)) for label, classes in labelled if classes]
        return "; ".join(parts if suspected else [*parts, WEAK.format(strong=self.strong)])

    def strongest(self, c: int) -> tuple[str, float] | None:
        """The measure that flags class ``c`` most strongly, with its index; None where none flags it (a result
        read back from an older scan can name such a class)."""
        evidence = self.evidence(c)
        return max(evidence.items(), key=lambda item: item[1]) if evidence else None

    def describe(self, c: int) -> str:
        """``class 0 (trigger inversion 10.48)``: an index just over the threshold is weaker evidence than one far
        over it (docs/scan.md gives both, as measured on clean and on backdoored models)."""
        strongest = self.strongest(c)
        return f"class {c}" if strongest is None else f"class {c} ({strongest[0]} {strongest[1]:.2f})"

    def indices(self) -> dict[str, list[float]]:
        """Each measure's per-class anomaly index, by name; empty for a measure that did not run (or cannot
        flag on its own, as the stripes outside ``--stripes``)."""
        return {
            "trigger inversion": self.nc_index,
            "universal perturbation": self.uap_index,
            "neuron perturbation": self.neuron_index,
            "stripes": self.stripe_index if self.stripes_alone else [],
            "warp": self.warp_index,
            "tone and stripes": self.periodic_index,
        }

    def evidence(self, c: int) -> dict[str, float]:
        """The measures whose index flags class ``c``, by name, with that index."""
        return {name: index[c] for name, index in self.indices().items() if index and index[c] > self.threshold}

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in PICTURES}
        data["verdict"], data["suspected"] = self.verdict, self.suspected
        return data

    @classmethod
    def from_json(cls, data: dict) -> ScanResult:
        """A result read back from :meth:`to_json` (without its pictures); fields newer than the scan that
        wrote it take their defaults, so an older scan is read with the measures it ran."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


#: What a class flagged only after a defense most likely is (ScanComparison's docstring says why).
ONLY_AFTER = "likely a natural sink, not a backdoor: docs/scan.md"
#: What a verdict of weak evidence only adds (the module doc and docs/scan.md give the measurements).
WEAK = "an index under {strong:g} is also seen on clean models (docs/scan.md)"


@dataclass
class ScanComparison:
    """The scan of a model before and after a defense, on the same clean images and seed.

    A class flagged only after the defense is told apart from evidence that remains: the defense trains on the
    user's clean data, which plants no backdoor, so such a class is a feature the fine-tuning sharpened (a
    natural "sink"), unless the scan missed a backdoor before and finds it after. Every such flag measured on
    the zoo was a class the attacker had not chosen (docs/scan.md)."""

    before: ScanResult
    after: ScanResult

    @property
    def remaining(self) -> list[int]:
        """Classes flagged before the defense and still after it: the evidence it left."""
        return sorted(set(self.before.flagged) & set(self.after.flagged))

    @property
    def new(self) -> list[int]:
        """Classes flagged only after the defense."""
        return sorted(set(self.after.flagged) - set(self.before.flagged))

    @property
    def verdict(self) -> str:
        before, remaining, new = set(self.before.flagged), set(self.remaining), set(self.new)
        if not before and not new:
            return "no class stands out, before or after the defense"
        if remaining:
            evidence = "backdoor evidence" if remaining & set(self.after.suspected) else "weak backdoor evidence"
            verdict = f"{evidence} remains: {_classes(remaining)} still {_stand(remaining)} out after the defense"
        elif before:
            evidence = "backdoor evidence" if self.before.suspected else "weak backdoor evidence"
            verdict = f"{evidence} before the defense ({_classes(before)}) no longer stands out after it"
        else:
            verdict = "no class stood out before the defense"
        if strength := self.strength():
            verdict += f" ({strength})"
        if new:
            verdict += f"; {_classes(new)} {_stand(new)} out only after it ({ONLY_AFTER})"
        return verdict

    def strength(self) -> str:
        """Per class flagged before, the index of the measure that flagged it most strongly, before -> after:
        evidence just under the threshold after the defense reads differently from evidence gone to zero. Empty
        when nothing was flagged before (or, in a result read back from an older scan, by no measure it holds)."""
        parts = []
        for c in self.before.flagged:
            if strongest := self.before.strongest(c):
                name, index = strongest
                after = self.after.indices().get(name) or []
                parts.append(f"class {c} by {name} {index:.2f} -> " + (f"{after[c]:.2f}" if after else "not run"))
        return "; ".join(parts) + f"; threshold {self.before.threshold:g}" if parts else ""

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "remaining": self.remaining,
            "new": self.new,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }


def _stand(classes: set[int]) -> str:
    return "stands" if len(classes) == 1 else "stand"


def _classes(classes: set[int]) -> str:
    return ("class " if len(classes) == 1 else "classes ") + ", ".join(map(str, sorted(classes)))


def anomaly_index(values: list[float], low: bool, floor: float) -> list[float]:
    """How many MADs each value lies beyond the median, towards small values (``low``) or large ones.

    The MAD is taken at least ``floor`` (in the values' unit): when most classes score alike (say a UAP
    success of 0% for eight of ten classes) the MAD falls to zero and any difference, however small, would
    read as an outlier."""
    median = statistics.median(values)
    mad = max(MAD_SCALE * statistics.median(abs(v - median) for v in values), floor)
    return [((median - v) if low else (v - median)) / mad for v in values]


def scan(clf: Classifier, clean: ImageData, cfg: ScanConfig = ScanConfig(), quiet: bool = False) -> ScanResult:
    """Scan ``clf`` with the clean images ``clean`` (on the model's device); ``clf`` is not changed."""
    import time

    start = time.perf_counter()
    classes = clf.info.num_classes
    if classes < 3:
        raise NadError(f"scan: the model has {classes} classes; an anomaly across classes needs at least 3")
    if len(clean) < cfg.batch or int((clean.class_counts() > 0).sum()) < 2:
        raise NadError(f"scan: {len(clean)} clean images of too few classes (at least {cfg.batch} of 2 classes)")
    module = clf.module
    was_training = module.training
    was_channels_last = any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in module.parameters()
    )
    module.eval()
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last)
    grads = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        gen = torch.Generator().manual_seed(cfg.seed)
        norms, reached, masks, patterns = invert_triggers(clf, clean, cfg, gen, quiet)
        success, perturbations = universal_success(clf, clean, cfg, gen, quiet)
        neuron = neuron_success(clf, clean, cfg, gen, quiet)
        tone, best_tones = tone_success(clf, clean, cfg, quiet)  # its own generator, as the warp's
        by_tone = rate_index(tone, WARP_RATE_FLOOR)
        # The stripes corroborate a tone; where no tone stands out they could not change the verdict, so they are
        # skipped (for time) unless asked for on their own. Last of ``gen``'s draws: the others stay as they were.
        corroborate = bool(by_tone) and max(by_tone) > cfg.threshold
        stripe = stripe_success(clf, clean, cfg, gen, quiet) if cfg.stripe_eps > 0 or corroborate else []
        warp, warps = warp_success(clf, clean, cfg, quiet)  # its own generator: the same draws with or without stripes
    finally:
        for p, g in zip(module.parameters(), grads):
            p.requires_grad_(g)
        module.train(was_training)
        if not was_channels_last:
            module.to(memory_format=torch.contiguous_format)
    nc = norm_index(norms)
    uap, by_neuron, by_stripe = rate_index(success), rate_index(neuron), rate_index(stripe)
    by_warp = rate_index(warp, WARP_RATE_FLOOR)
    # Without the stripes no tone index passes the threshold, so the tone's own index stands in for the smaller.
    periodic = [min(t, s) for t, s in zip(by_tone, by_stripe)] if by_stripe else list(by_tone)
    alone = by_stripe if cfg.stripe_eps > 0 else []
    indices = [i for i in (nc, uap, by_neuron, alone, by_warp, periodic) if i]  # a measure that is off has none
    flagged = [k for k in range(classes) if max(i[k] for i in indices) > cfg.threshold]
    return ScanResult(
        norms,
        reached,
        success,
        nc,
        uap,
        flagged,
        cfg.threshold,
        time.perf_counter() - start,
        masks,
        patterns,
        perturbations,
        neuron,
        by_neuron,
        stripe,
        by_stripe,
        warp,
        by_warp,
        warps,
        tone,
        by_tone,
        best_tones,
        periodic,
        cfg.stripe_eps > 0,
        cfg.strong,
    )


def forward(clf: Classifier, x: Tensor, cfg: ScanConfig) -> Tensor:
    """Logits of float images ``x`` in [0, 1], in the scan's precision and layout (fp32 logits)."""
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    with autocast(x.device, cfg.precision):
        return clf.module(clf.preprocess_float(x).contiguous(memory_format=fmt)).float()


def norm_index(norms: list[float]) -> list[float]:
    """The anomaly index of inverted mask norms, on the log scale, below the median (trigger inversion's)."""
    # A norm of ~0 (a class every image already goes to, untriggered) is taken as 1% of a pixel.
    return anomaly_index([math.log(max(n, 0.01)) for n in norms], low=True, floor=NC_FLOOR)


def rate_index(rates: list[float], floor: float = 0.005) -> list[float]:
    """The anomaly index of success rates (%) towards each class, on the log-odds scale (rates clipped to
    ``floor``), above the median; ``[]`` for a measure that did not run."""
    return anomaly_index([logit(r / 100, floor) for r in rates], low=False, floor=UAP_FLOOR) if rates else []


def logit(p: float, eps: float = 0.005) -> float:
    """log(p / (1 - p)), with p clipped to [eps, 1 - eps] (a success rate of 0 or 1 on a few hundred images)."""
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def draw(clean: ImageData, count: int, gen: torch.Generator) -> Tensor:
    """``count`` clean images (float, [0, 1]) drawn at random."""
    index = torch.randint(len(clean), (count,), generator=gen).to(clean.device)
    return clean.x[index].float().div_(255)


def held_out(clean: ImageData, target: int, count: int, gen: torch.Generator) -> Tensor:
    """A fresh random draw of ``count`` clean images, less those of class ``target`` (float, [0, 1])."""
    index = torch.randint(len(clean), (count,), generator=gen).to(clean.device)
    return clean.x[index][clean.y[index] != target].float().div_(255)


def invert_triggers(
    clf: Classifier, clean: ImageData, cfg: ScanConfig, gen: torch.Generator, quiet: bool
) -> tuple[list[float], list[bool], Tensor, Tensor]:
    """Neural Cleanse's optimisation for every class at once; the smallest successful mask norm per class."""
    k = clf.info.num_classes
    c, h, w = clean.image_shape
    device = clean.device
    mask_raw = (torch.rand(k, 1, h, w, generator=gen) * 2 - 1).mul_(0.1).to(device).requires_grad_()
    pattern_raw = (torch.rand(k, c, h, w, generator=gen) * 2 - 1).to(device).requires_grad_()
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=cfg.lr, betas=(0.5, 0.9))
    cost = torch.full((k,), cfg.init_cost, device=device)
    up = torch.zeros(k, device=device)
    down = torch.zeros(k, device=device)
    best = torch.full((k,), float("inf"), device=device)
    best_mask = torch.zeros(k, 1, h, w, device=device)
    best_pattern = torch.zeros(k, c, h, w, device=device)
    targets = torch.arange(k, device=device).repeat_interleave(cfg.batch)
    for _ in tqdm(range(cfg.steps), desc="scan: trigger inversion", disable=quiet, leave=False):
        x = draw(clean, cfg.batch, gen)
        mask = torch.tanh(mask_raw) / 2 + 0.5
        pattern = torch.tanh(pattern_raw) / 2 + 0.5
        stamped = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # (K, B, C, H, W)
        logits = forward(clf, stamped.flatten(0, 1), cfg)
        ce = F.cross_entropy(logits, targets, reduction="none").view(k, cfg.batch).mean(1)
        norm = mask.flatten(1).sum(1)
        opt.zero_grad(set_to_none=True)
        (ce + cost * norm).sum().backward()
        opt.step()
        with torch.no_grad():
            hit = (logits.argmax(1) == targets).float().view(k, cfg.batch).mean(1) >= cfg.success
            better = hit & (norm < best)
            best = torch.where(better, norm, best)
            best_mask[better] = mask[better]
            best_pattern[better] = pattern[better]
            up = torch.where(hit, up + 1, torch.zeros_like(up))
            down = torch.where(hit, torch.zeros_like(down), down + 1)
            cost = torch.where(up >= cfg.patience, cost * cfg.cost_factor, cost)
            cost = torch.where(down >= cfg.patience, cost / cfg.cost_factor**1.5, cost)
            up = torch.where(up >= cfg.patience, torch.zeros_like(up), up)
            down = torch.where(down >= cfg.patience, torch.zeros_like(down), down)
    reached = torch.isfinite(best)
    # A class never sent to 99% gets the whole image as its norm: no small trigger was found for it.
    norms = torch.where(reached, best, torch.full_like(best, float(h * w)))
    return norms.tolist(), reached.tolist(), best_mask.cpu(), best_pattern.cpu()


def universal_success(
    clf: Classifier, clean: ImageData, cfg: ScanConfig, gen: torch.Generator, quiet: bool
) -> tuple[list[float], Tensor]:
    """Per class t: the success rate (%) of one L-inf ``eps`` perturbation, found by signed-gradient steps
    on random clean images, at sending held-out clean images of other classes to t; and the perturbations."""
    return universal_rates(clf, clean, clean.image_shape, cfg.eps, cfg.uap_step, cfg, gen, quiet, "universal")


def stripe_success(
    clf: Classifier, clean: ImageData, cfg: ScanConfig, gen: torch.Generator, quiet: bool
) -> list[float]:
    """Per class t: the better success rate (%) of two universal perturbations within ``stripe_eps`` (or, run
    to corroborate a tone, ``tone_amplitude``) towards t, one constant down every column of the image (one
    value per column and channel) and one along every row; ``[]`` when both are 0."""
    eps = cfg.stripe_eps or cfg.tone_amplitude  # on their own at theirs, else to corroborate a tone at its amplitude
    if eps == 0:
        return []
    c, h, w = clean.image_shape
    columns, _ = universal_rates(clf, clean, (c, 1, w), eps, eps / 4, cfg, gen, quiet, "column stripe")
    rows, _ = universal_rates(clf, clean, (c, h, 1), eps, eps / 4, cfg, gen, quiet, "row stripe")
    return [max(a, b) for a, b in zip(columns, rows)]


def tones(h: int, w: int, amplitude: float) -> Tensor:
    """Every pure tone of the tone measure, (P, 1, H, W), the same in every channel: ``amplitude * sin(2 pi j f / n
    + phase)`` along the columns (j the column, n = W; SIG's trigger is the one of f 6, phase 0) and then along the
    rows, for f = 1 .. 12 periods (at most n / 2) and phases in eighths of a turn. See :func:`describe_tone`."""
    out = []
    for n, shape in ((w, (1, 1, w)), (h, (1, h, 1))):
        j = torch.arange(n, dtype=torch.float64)
        for f in range(1, min(TONE_FREQUENCIES, n // 2) + 1):
            for phase in range(TONE_PHASES):
                signal = amplitude * torch.sin(2 * math.pi * j * f / n + 2 * math.pi * phase / TONE_PHASES)
                out.append(signal.float().view(shape).expand(1, h, w))
    return torch.stack(out)


def describe_tone(index: int, h: int, w: int) -> str:
    """A tone's place in :func:`tones` in words, e.g. ``columns f=6 phase=0/8``."""
    per_axis = [min(TONE_FREQUENCIES, n // 2) * TONE_PHASES for n in (w, h)]
    axis, index = ("columns", index) if index < per_axis[0] else ("rows", index - per_axis[0])
    f, phase = divmod(index, TONE_PHASES)
    return f"{axis} f={f + 1} phase={phase}/{TONE_PHASES}"


def tone_success(clf: Classifier, clean: ImageData, cfg: ScanConfig, quiet: bool) -> tuple[list[float], list[int]]:
    """Per class t: the tone of :func:`tones` at ``tone_amplitude`` that sends most of ``batch`` x K random clean
    images of other classes to t, and its success rate (%) on held-out clean images of other classes; the
    rates and each class's tone. Forward passes only; its own generator. ``[], []`` when off."""
    if cfg.tone_amplitude == 0:
        return [], []
    k = clf.info.num_classes
    device = clean.device
    gen = torch.Generator().manual_seed(cfg.seed)
    patterns = tones(*clean.image_shape[1:], cfg.tone_amplitude).to(device)
    index = torch.randint(len(clean), (cfg.batch * k,), generator=gen).to(device)
    x, y = clean.x[index].float().div_(255), clean.y[index]
    classes = torch.arange(k, device=device)[None, :, None]  # (1, K, 1): against (N,) predictions, (1, K, N)
    counts = []  # per tone and class: how many drawn images of other classes it sends there
    with torch.no_grad():
        # One batch of ``batch`` x K images per tone: stacking tones into larger batches ran slower on CPU.
        for tone in tqdm(patterns, desc="scan: tones", disable=quiet, leave=False):
            hits = forward(clf, (x + tone).clamp(0, 1), cfg).argmax(1)
            counts.append(((hits == classes) & (y != classes)).sum(2)[0])
        best = torch.stack(counts).argmax(0)
        rates = held_out_rates(clf, clean, cfg, gen, lambda z, t: (z + patterns[best[t]]).clamp(0, 1))
    return rates, best.tolist()


def warp_success(clf: Classifier, clean: ImageData, cfg: ScanConfig, quiet: bool) -> tuple[list[float], Tensor | None]:
    """Per class t: the success rate (%) of one smooth warp towards t, ``warp_grid`` x ``warp_grid`` control
    offsets within ``warp_bound`` pixels upsampled bicubic to the image, found by ``uap_steps`` signed steps of
    a quarter of the bound on random clean images, at sending held-out clean images of other classes to t; and
    the offsets (K, 2, g, g). ``[]`` and None when ``warp_bound`` is 0 (off). Drawn from its own generator."""
    if cfg.warp_bound == 0:
        return [], None
    k = clf.info.num_classes
    device = clean.device
    gen = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.zeros(k, 2, cfg.warp_grid, cfg.warp_grid, device=device, requires_grad=True)
    targets = torch.arange(k, device=device).repeat_interleave(cfg.batch)
    for _ in tqdm(range(cfg.uap_steps), desc="scan: warp perturbations", disable=quiet, leave=False):
        x = draw(clean, cfg.batch, gen).repeat(k, 1, 1, 1)
        loss = F.cross_entropy(forward(clf, warp_images(x, offsets, targets), cfg), targets)
        (grad,) = torch.autograd.grad(loss, offsets)
        with torch.no_grad():
            offsets.sub_(cfg.warp_bound / 4 * grad.sign()).clamp_(-cfg.warp_bound, cfg.warp_bound)
    with torch.no_grad():
        rates = held_out_rates(
            clf, clean, cfg, gen, lambda x, t: warp_images(x, offsets, torch.full((len(x),), t, device=device))
        )
    return rates, offsets.detach().cpu()


def held_out_rates(
    clf: Classifier, clean: ImageData, cfg: ScanConfig, gen: torch.Generator, move: Callable[[Tensor, int], Tensor]
) -> list[float]:
    """Per class t: the share (%) of a fresh draw of held-out clean images of other classes that ``move(x, t)``
    (a perturbation towards t) sends to t; 0 where the draw holds none. One copy from the device in all."""
    rates = []
    for t in range(clf.info.num_classes):
        x = held_out(clean, t, cfg.holdout, gen)
        if len(x) == 0:
            rates.append(torch.zeros((), device=clean.device))
            continue
        rates.append((forward(clf, move(x, t), cfg).argmax(1) == t).float().mean())
    return [100.0 * float(r) for r in torch.stack(rates).cpu()]


def warp_images(x: Tensor, offsets: Tensor, group: Tensor) -> Tensor:
    """Images ``x`` (N, C, H, W) in [0, 1], image i warped by the control offsets ``offsets[group[i]]``
    ((K, 2, g, g), in pixels, x then y), upsampled bicubic to the image size; bilinear sampling, as WaNet's."""
    h, w = x.shape[-2:]
    field = warp_field(offsets, h, w)
    to_grid = torch.tensor([2 / (w - 1), 2 / (h - 1)], device=x.device)  # pixels -> grid_sample's [-1, 1]
    grids = (identity_grid(h, w).to(x.device) + field * to_grid).clamp(-1, 1)
    return F.grid_sample(x, grids[group], mode="bilinear", align_corners=True)


def warp_field(offsets: Tensor, h: int, w: int) -> Tensor:
    """Control offsets (K, 2, g, g) upsampled bicubic to per-pixel displacements (K, H, W, 2), in pixels (x, y)."""
    return F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def universal_rates(
    clf: Classifier,
    clean: ImageData,
    shape: tuple[int, ...],
    eps: float,
    step: float,
    cfg: ScanConfig,
    gen: torch.Generator,
    quiet: bool,
    what: str,
) -> tuple[list[float], Tensor]:
    """One perturbation per class of ``shape`` (broadcast over the image: ``(C, 1, W)`` is a pattern of
    columns), ``cfg.uap_steps`` signed steps of ``step`` within L-inf ``eps`` towards the class on random
    clean images; its success rate (%) on held-out clean images of the other classes, and the perturbations."""
    k = clf.info.num_classes
    device = clean.device
    delta = torch.zeros(k, *shape, device=device, requires_grad=True)
    targets = torch.arange(k, device=device).repeat_interleave(cfg.batch)
    for _ in tqdm(range(cfg.uap_steps), desc=f"scan: {what} perturbations", disable=quiet, leave=False):
        x = draw(clean, cfg.batch, gen)
        moved = (x[None] + delta[:, None]).clamp(0, 1).flatten(0, 1)
        loss = F.cross_entropy(forward(clf, moved, cfg), targets)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta.sub_(step * grad.sign()).clamp_(-eps, eps)
    with torch.no_grad():
        rates = held_out_rates(clf, clean, cfg, gen, lambda x, t: (x + delta[t]).clamp(0, 1))
    return rates, delta.detach().cpu()


class ClassNeuronNoise:
    """ANP's neuron perturbation, one per target class: on every affine BatchNorm, ``weight * (1 + dw) * x_hat +
    bias * (1 + db)``, with the noise (dw, db) of class ``group[i]`` applied to image i; by forward hooks on the
    unmodified modules, removed on exit."""

    def __init__(self, module: torch.nn.Module, classes: int) -> None:
        self.norms = [m for _, m in batch_norms(module)]
        device = next(module.parameters()).device
        self.noise = [torch.zeros(classes, 2, m.num_features, device=device, requires_grad=True) for m in self.norms]
        self.group = torch.zeros(0, dtype=torch.long, device=device)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> ClassNeuronNoise:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.norms)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, i: int):
        def rewrite(m: torch.nn.Module, _inputs: object, out: Tensor) -> Tensor:
            shape = (len(out), -1) + (1,) * (out.ndim - 2)
            noise = self.noise[i][self.group].to(out.dtype)  # (N, 2, C)
            bias = m.bias.view(1, -1, *shape[2:]).to(out.dtype)
            return out + (out - bias) * noise[:, 0].reshape(shape) + bias * noise[:, 1].reshape(shape)

        return rewrite


def neuron_success(
    clf: Classifier, clean: ImageData, cfg: ScanConfig, gen: torch.Generator, quiet: bool
) -> list[float]:
    """Per class t: the success rate (%) of one adversarial neuron perturbation within ``neuron_eps``, found by
    signed steps towards t on random clean images, at sending held-out clean images of other classes to t."""
    k = clf.info.num_classes
    device = clean.device
    with ClassNeuronNoise(clf.module, k) as noise:
        if not noise.norms:
            return [0.0] * k
        targets = torch.arange(k, device=device).repeat_interleave(cfg.batch)
        noise.group = targets
        for _ in tqdm(range(cfg.neuron_steps), desc="scan: neuron perturbations", disable=quiet, leave=False):
            x = draw(clean, cfg.batch, gen).repeat(k, 1, 1, 1)
            loss = F.cross_entropy(forward(clf, x, cfg), targets)
            grads = torch.autograd.grad(loss, noise.noise)
            with torch.no_grad():
                for n, g in zip(noise.noise, grads):
                    n.sub_(cfg.neuron_step * g.sign()).clamp_(-cfg.neuron_eps, cfg.neuron_eps)

        def towards(x: Tensor, t: int) -> Tensor:  # the images stay; class t's noise applies to them
            noise.group = torch.full((len(x),), t, device=device)
            return x

        with torch.no_grad():
            return held_out_rates(clf, clean, cfg, gen, towards)


def format_table(result: ScanResult) -> str:
    empty = [0.0] * len(result.norms)
    neuron, neuron_index = result.neuron_success or empty, result.neuron_index or empty
    head = ["class", "mask L1", "NC index", "UAP %", "UAP index", "ANP %", "ANP index"]
    widths = [5, 8, 8, 6, 9, 6, 9]
    if result.stripe_success:  # the stripes ran (on their own, or to corroborate a tone)
        head, widths = [*head, "stripe %", "stripe index"], [*widths, 8, 12]
    if result.warp_success:  # the warp measure ran (``warp_bound`` > 0)
        head, widths = [*head, "warp %", "warp index"], [*widths, 6, 10]
    if result.tone_success:  # the tone measure ran (``tone_amplitude`` > 0)
        head, widths = [*head, "tone %", "tone index"], [*widths, 6, 10]
    lines = [" ".join(f"{h:>{w}s}" for h, w in zip(head, widths))]
    for c in range(len(result.norms)):
        mark = "  <- flagged" if c in result.flagged else ""
        norm = f"{result.norms[c]:8.1f}" if result.reached[c] else f"{'>' + str(int(result.norms[c])):>8s}"
        line = (
            f"{c:5d} {norm} {result.nc_index[c]:8.2f} {result.uap_success[c]:6.1f} {result.uap_index[c]:9.2f}"
            f" {neuron[c]:6.1f} {neuron_index[c]:9.2f}"
        )
        if result.stripe_success:
            line += f" {result.stripe_success[c]:8.1f} {result.stripe_index[c]:12.2f}"
        if result.warp_success:
            line += f" {result.warp_success[c]:6.1f} {result.warp_index[c]:10.2f}"
        if result.tone_success:
            line += f" {result.tone_success[c]:6.1f} {result.tone_index[c]:10.2f}"
        lines.append(line + mark)
    if result.tone_success and not result.stripe_success:
        lines.append("(no tone index above the threshold, so no stripes were drawn to corroborate one)")
    return "\n".join(lines)
