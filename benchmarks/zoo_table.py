"""Write ``zoo/README.md``: one row per model in ``zoo/`` (from its ``results.json``), with the command that
made it. Run from the repository root: ``python -m benchmarks.zoo_table``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from nad.training import load_profile

ZOO = Path("zoo")

HEADER = """# The model zoo

WRN-16-1 models trained on CIFAR-10 (the shared JPEG-decoded copy: `python ../shared/data/cifar10/prepare.py
data/cifar10`), one per attack and training profile, plus a clean control per profile. Each folder is a
`nad train` output (`model.safetensors`, `model.json`, `results.json`; Trojan's also holds its trigger,
Refool's its reflection pool and CL's the surrogate its perturbations were computed against), so
`nad eval zoo/NAME --data cifar10:data/cifar10` and `nad erase zoo/NAME --clean cifar10:data/cifar10 --out DIR`
work as they are, and `nad bench` takes them instead of training (`--zoo`, default `./zoo`) wherever a
bench asks for a model trained exactly this way. `zoo/build.sh PROFILE [NAME ...]` trains the missing ones.

Profiles (`src/nad/presets/profiles/`): `reference` is the NAD reference code's `train_badnet.py` (no
augmentation, the data's own order, 19 epochs at lr 0.1, batch 64); `standard` trains with crop, flip and
Cutout, shuffled, 40 epochs, lr 0.1 then 0.001 from epoch 20; `cosine` is `nad train`'s default. All zoo
models train under bf16 autocast with channels-last (the profiles' documented deviation, for time; `cosine`,
whose profile is fp32, asks for it with `--precision bf16`), seed 0,
target class 0. ACC is on all 10,000 test images, ASR on the 9,000 triggered non-target ones. Wall time is
that of the run on 2 CPU cores, often shared with other work, so it overstates the cost.

| model | attack | profile | ACC % | ASR % | wall time | command |
|---|---|---|---|---|---|---|
"""


FOOTER = """
Same configuration, not always the same weights: training in bf16 on CPU is not bitwise reproducible across
thread counts, so `nad train` with a row's command gives a model of the same configuration (and the same
`nad bench` cache key) whose scores can differ by about a point. `standard-badnets` holds the very weights of
the `paper-cifar10` grid's standard BadNets cells (83.63 / 99.99). `standard-blend` was trained again with
one thread (84.96 / 100.00): the grid's earlier standard Blend cells (`none`, FT, FP, MCR, NAD) were measured
on an earlier model of this configuration (ACC 84.31, ASR 100.00) that was not kept, and its later cells on this one.
"""


def requested(spec: str) -> str:
    """The attack spec as given to ``nad train``: without the files its preparation wrote (a Trojan trigger,
    a Refool pool), which the recorded spec names."""
    from nad.attacks import parse_attack

    attack = parse_attack(spec)
    made = {key: getattr(type(attack), key, None) for key in attack.path_fields}
    return dataclasses.replace(attack, **made).spec()


def command(name: str, config: dict) -> str:
    attack = f" --attack {requested(config['attack'])}" if config.get("attack") else ""
    profile = config.get("profile", "?")
    precision = config.get("precision")
    # A precision other than the profile's own was asked for on the command line (cosine models, for time).
    flag = f" --precision {precision}" if precision and precision != load_profile(profile).precision else ""
    return (
        f"`nad train --data cifar10:data/cifar10 --arch {config['arch']} --profile {profile}{flag}"
        f"{attack} --seed {config.get('seed', 0)} --out zoo/{name}`"
    )


def row(folder: Path) -> str:
    record = json.loads((folder / "results.json").read_text())
    config, scores = record["config"], record.get("scores") or {}
    asr = "–" if scores.get("asr") is None else f"{scores['asr']:.2f}"
    minutes = f"{record.get('seconds', 0) / 60:.0f} min"
    attack = config.get("attack") or "none (clean)"
    profile = config.get("profile", "?")
    cells = [f"`{folder.name}`", attack, profile, f"{scores.get('acc', 0):.2f}", asr, minutes]
    return "| " + " | ".join([*cells, command(folder.name, config)]) + " |"


def still_training() -> str:
    """A line per model whose staging folder (``zoo/.NAME.nad-partial``) holds a saved training state: a
    model too long for one sitting, committed part-trained so that ``--resume`` finishes it later."""
    lines = []
    for stage in sorted(ZOO.glob(".*.nad-partial")):
        state = stage / "train-state.pt"
        if not state.is_file():
            continue
        done = int(torch.load(state, map_location="cpu", weights_only=True)["epochs_done"])
        name = stage.name[1 : -len(".nad-partial")]
        profile, _, attack = name.partition("-")
        lines.append(
            f"- `{name}`: {done} epochs done, in `zoo/{stage.name}` (its training state and what its attack "
            f"prepared); `zoo/build.sh {profile} {attack}` resumes it."
        )
    return "\nStill training:\n\n" + "\n".join(lines) + "\n" if lines else ""


def main() -> None:
    folders = sorted(p for p in ZOO.iterdir() if (p / "results.json").is_file())
    table = HEADER + "\n".join(row(f) for f in folders) + "\n"
    (ZOO / "README.md").write_text(table + still_training() + FOOTER)
    print(f"wrote {ZOO / 'README.md'}: {len(folders)} models")


if __name__ == "__main__":
    main()
