"""``auto``: the defense chosen by what the model shows, for a user who does not know the trigger (ours).

Two defenses of this package each fail where the other works, and the scan tells the two cases apart
(docs/defenses.md, ``paper-cifar10``'s standard study):

- **Neural Cleanse unlearning** (``nc``) removes a backdoor whose trigger the scan can invert (a patch, a
  blended image), keeping almost all the clean accuracy; but where the scan inverts no trigger it returns the
  model unchanged, backdoor included (SIG: ASR 90% after it).
- **ANP, then fine-tuning** (``anp_ft``) needs no trigger: it prunes the neurons that adversarial neuron
  perturbations expose, and removes SIG's full-image backdoor, which the trigger inversion misses; it costs
  more clean accuracy and time (2,000 mask iterations) where ``nc`` suffices.

So ``auto`` scans the model once (``nc.scan``, with ``nc``'s seed and precision: Neural Cleanse's trigger
inversion, the universal adversarial perturbation, and the neuron, warp and tone measures, :mod:`nad.scan`).
Where a class is flagged with an input trigger (``ScanResult.trigger_flagged``), it unlearns those triggers as
``nc`` does, from the same scan; otherwise, a class flagged by the neuron, warp or tone measure alone included
(WaNet's and SIG's targets), it runs ``anp_ft``.
The log says which route was taken (``route``), with that defense's own log. Each route is that defense
unchanged, with its own defaults: with the same seed, ``auto`` gives bit for bit what the chosen defense gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from nad.data.dataset import ImageData
from nad.defenses.anp import ANPFineTune, ANPFineTuneConfig
from nad.defenses.base import Defense, Monitor, Repair
from nad.defenses.nc import NCConfig, NeuralCleanse
from nad.defenses.registry import register_defense
from nad.models.checkpoint import Classifier
from nad.scan import scan


@dataclass(frozen=True)
class AutoConfig:
    """The two routes' configurations: ``nc`` (its ``scan`` decides the route) and ``anp_ft``."""

    nc: NCConfig = field(default_factory=NCConfig)
    anp_ft: ANPFineTuneConfig = field(default_factory=ANPFineTuneConfig)


@register_defense
class Auto(Defense):
    """``Auto(AutoConfig()).repair(model, clean)``: ``nc`` where the scan inverts a trigger, else ``anp_ft``."""

    name = "auto"
    Config = AutoConfig

    def check(self, model: Classifier, clean: ImageData) -> None:
        NeuralCleanse(self.config.nc).check(model, clean)

    def repair(
        self,
        model: Classifier,
        clean: ImageData,
        quiet: bool = False,
        monitor: Monitor | None = None,
        fine_tuned: Classifier | None = None,
    ) -> Repair:
        cfg: AutoConfig = self.config
        start = time.perf_counter()
        unlearning = NeuralCleanse(cfg.nc)
        found = scan(model, clean, unlearning.scan_config(), quiet)
        scan_seconds = time.perf_counter() - start
        if found.trigger_flagged:
            chosen = unlearning.unlearn(model, clean, found, scan_seconds, quiet, monitor)
            return Repair(chosen.model, {"route": "nc", **chosen.log})
        chosen = ANPFineTune(cfg.anp_ft).repair(model, clean, quiet, monitor)
        seconds = {"scan": scan_seconds, **chosen.log.get("seconds", {})}
        return Repair(chosen.model, {"route": "anp_ft", "scan": found.to_json(), **chosen.log, "seconds": seconds})
