"""The model an attack is computed against (Trojan's trigger, CL's perturbations): a given one, or a
surrogate trained here on the attack's data with ``nad train``'s default recipe (the ``cosine`` profile).

It sits below ``nad.api``: attacks train their surrogate with the training loop itself, not through the API
that uses the attacks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nad.data.dataset import ImageData
from nad.errors import NadError
from nad.models.checkpoint import Classifier, ModelInfo, build_classifier, load_model, save_model
from nad.training import load_profile, train


def attack_model(
    path: str | None, data: ImageData, arch: str, epochs: int, seed: int, who: str, cache: Path | None = None
) -> Classifier:
    """The frozen, eval-mode model an attack is computed against, on the data's device.

    ``path`` is read with :func:`~nad.models.checkpoint.load_model`; without it a surrogate ``arch`` is
    trained on ``data`` for ``epochs`` epochs with the ``nad train`` schedule. The global random state is
    left as it was, so the model trained afterwards starts from the same weights as without the attack.
    With ``cache`` (a path without suffix, in the run's folder) a trained surrogate is saved there as
    ``CACHE.safetensors`` and ``CACHE.json``, and a resumed run that finds them reads them instead of
    training the surrogate again (an hour of CPU for CL's WRN-16-1).
    """
    device = data.x.device
    cached = None if cache is None else cache.with_name(cache.name + ".safetensors")
    if path is None and cached is not None and cached.is_file():
        path = str(cached)
    if path is not None:
        clf = load_model(path)
        if tuple(clf.info.input_size) != data.image_shape:
            raise NadError(
                f"{who}: model {path} takes inputs of shape {tuple(clf.info.input_size)}, the data has "
                f"{data.image_shape}"
            )
        clf.to(device)
    else:
        cfg = dataclasses.replace(load_profile("cosine"), epochs=epochs, seed=seed)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)  # as nad train seeds a model it trains
            clf = build_classifier(ModelInfo(arch, data.num_classes, data.image_shape)).to(device)
            train(clf, data, cfg, desc=f"{who} surrogate", quiet=True)
        if cache is not None:
            save_model(clf, cache.parent, cache.name)
    clf.module.eval()
    for p in clf.module.parameters():
        p.requires_grad_(False)
    return clf
