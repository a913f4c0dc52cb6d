"""What each ``nad`` command does, given its parsed arguments. Kept thin: the work is in ``nad.api``."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from nad.api import SCRATCH, train_model
from nad.attacks import Attack, parse_attack
from nad.cli import out_dir
from nad.data import ImageData, load_data
from nad.data.sources import parse_data_spec
from nad.device import resolve_device
from nad.errors import NadError
from nad.io import write_json
from nad.metrics import Scores, evaluate
from nad.models import Classifier, load_model, parse_normalize, save_model

DEFAULT_NORMALIZE = {"cifar10": "cifar10", "digits": "digits"}


def test_spec(data_spec: str, explicit: str | None) -> str | None:
    """The test set: ``--test`` if given, else the test split of a dataset that has one."""
    if explicit:
        return explicit
    kind, location, _ = parse_data_spec(data_spec)
    if kind == "digits":
        return "digits:test"
    if kind == "cifar10":
        return f"cifar10:{location}:test"
    return None


def attack_for(spec: str | None, data: ImageData) -> Attack | None:
    if not spec:
        return None
    attack = parse_attack(spec)
    attack.check(data.num_classes, data.image_shape)
    return attack


def print_scores(rows: dict[str, Scores | None]) -> None:
    print(f"{'':12s} {'ACC %':>7s} {'ASR %':>7s}")
    for name, s in rows.items():
        if s is not None:
            asr = "-" if s.asr is None else f"{s.asr:7.2f}"
            print(f"{name:12s} {s.acc:7.2f} {asr:>7s}")


def run_train(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    data = load_data(args.data, "train")
    spec = test_spec(args.data, args.test)
    test = load_data(spec, "test").to(device) if spec else None
    attack = attack_for(args.attack, data)
    kind, _, _ = parse_data_spec(args.data)
    normalize = parse_normalize(args.normalize or DEFAULT_NORMALIZE.get(kind, "none"))
    optim = replace(SCRATCH.optim, lr=args.lr or SCRATCH.optim.lr)
    cfg = replace(
        SCRATCH,
        epochs=SCRATCH.epochs if args.epochs is None else args.epochs,
        batch_size=args.batch_size or SCRATCH.batch_size,
        optim=optim,
        seed=args.seed,
        precision=args.precision,
        channels_last=args.channels_last,
    )
    out = out_dir(args.out, args.overwrite or args.resume)
    state = out / "train-state.pt"
    if state.exists() and not args.resume:
        state.unlink()  # --overwrite without --resume starts afresh
    result = train_model(
        data.to(device), args.arch, cfg, attack, test, normalize, args.arch_kwargs, args.quiet, state_path=state
    )
    save_model(result.model, out)
    state.unlink(missing_ok=True)  # finished: the model and results supersede the training state
    summary: dict[str, Any] = {
        "scores": result.scores.to_json() if result.scores else None,
        "seconds": round(result.seconds, 1),
        "config": {
            "data": args.data,
            "arch": args.arch,
            "attack": attack.spec() if attack else None,
            **_jsonable(cfg),
        },
        "history": result.history.epochs,
    }
    write_json(out / "results.json", summary)
    print_scores({"model": result.scores})
    print(f"wrote {out}/model.safetensors in {result.seconds:.0f} s")
    return 0


def load_classifier(args: argparse.Namespace) -> Classifier:
    return load_model(args.model, args.arch, args.num_classes, args.normalize, args.arch_kwargs)


def run_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    clf = load_classifier(args).to(device)
    test = load_data(args.data, "test")
    check_fits(clf, test)
    attack = attack_for(args.attack or clf.info.attack, test)
    scores = evaluate(clf, test.to(device), attack)
    if args.json:
        print(json.dumps(scores.to_json()))
    else:
        print_scores({"model": scores})
    return 0


def check_fits(clf: Classifier, data: ImageData) -> None:
    if data.num_classes > clf.info.num_classes:
        raise NadError(
            f"{data.name} has {data.num_classes} classes but the model predicts {clf.info.num_classes} "
            "(is --num-classes right?)"
        )
    if data.image_shape[0] != clf.info.input_size[0]:
        raise NadError(f"{data.name} has {data.image_shape[0]} channels but the model expects {clf.info.input_size[0]}")


def _jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_jsonable(v) for v in obj]
    return obj


def parse_list(text: str | None, kind: type, what: str) -> tuple:
    if not text:
        return ()
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise NadError(f"{what} {text!r}: expected a comma-separated list of {kind.__name__}") from None


def defense_from_args(args: argparse.Namespace):  # -> Defense
    from nad.defenses import NADConfig, defense_class
    from nad.training import TrainConfig

    cls = defense_class(args.defense)
    base = TrainConfig(seed=args.seed, precision=args.precision)
    if args.epochs is not None:
        base = replace(base, epochs=args.epochs)
    if cls.Config is NADConfig:
        cfg = NADConfig(
            train=base,
            teacher_epochs=10 if args.teacher_epochs is None else args.teacher_epochs,
            layers=parse_list(args.layers, str, "--layers"),
            betas=parse_list(args.betas, float, "--betas"),
            p=2.0 if args.p is None else args.p,
        )
        return cls(cfg)
    return cls(base)


def erase_summary(result, args: argparse.Namespace, defense, attack, test: str | None, device) -> dict[str, Any]:
    return {
        "before": result.before.to_json() if result.before else None,
        "after": result.after.to_json() if result.after else None,
        "finetune": result.finetune.to_json() if result.finetune else None,
        "config": {
            "model": str(args.model),
            "defense": args.defense,
            "clean": args.clean,
            "clean_ratio": args.clean_ratio,
            "clean_size": result.clean_size,
            "test": test,
            "attack": attack.spec() if attack else None,
            "device": str(device),
            **_jsonable(defense.config),
        },
        "seconds": round(result.seconds, 1),
        "log": result.log,
    }


def run_erase(args: argparse.Namespace) -> int:
    from nad.api import erase, save_erase_outputs, select_clean

    device = resolve_device(args.device)
    clf = load_classifier(args).to(device)
    pool = load_data(args.clean, "train")
    check_fits(clf, pool)
    spec = test_spec(args.clean, args.test)
    test = load_data(spec, "test") if spec else None
    if test is not None:
        check_fits(clf, test)
        test = test.to(device)
    attack = attack_for(args.attack or clf.info.attack, pool)
    defense = defense_from_args(args)
    out = out_dir(args.out, args.overwrite)
    clean = select_clean(pool.to(device), args.clean_ratio, args.seed)
    result = erase(
        clf, clean, defense, test, attack, baseline=not args.no_baseline, quiet=args.quiet, curve_subset=args.curves
    )
    summary = erase_summary(result, args, defense, attack, spec, device)
    save_erase_outputs(out, clf, result, summary, test, attack)
    if test is None:
        print("no test data (give --test): scores were not measured")
    print_scores(
        {
            "before": result.before,
            args.defense: result.after,
            "finetune": result.finetune if args.defense != "finetune" else None,
        }
    )
    print(f"wrote {out}/model.safetensors in {result.seconds:.0f} s")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from nad.demo import run_demo as demo

    out = out_dir(args.out, args.overwrite)
    trained, result = demo(out, args.seed, args.quiet, str(resolve_device(args.device)))
    print_scores({"backdoored": result.before, "NAD": result.after, "finetune": result.finetune})
    print(f"wrote {out}/results.json, {out}/attention.png and the models in {result.seconds + trained.seconds:.0f} s")
    return 0


def run_attention(args: argparse.Namespace) -> int:
    import torch

    from nad.defenses.nad import NADConfig, resolve_layers
    from nad.viz import attention_figure

    device = resolve_device(args.device)
    paths = [args.model, *args.compare]
    models = [load_model(p, args.arch, args.num_classes, args.normalize, args.arch_kwargs).to(device) for p in paths]
    data = load_data(args.data, "test")
    for clf in models:
        check_fits(clf, data)
    attack = attack_for(args.attack or models[0].info.attack, data)
    if attack is None:
        raise NadError("say which trigger to draw with --attack (the model records none)")
    pool = data.subset(torch.nonzero(data.y != attack.target).flatten())
    gen = torch.Generator().manual_seed(args.seed)
    images = pool.x[torch.randperm(len(pool), generator=gen)[: max(1, args.n)]].to(device)
    cfg = NADConfig(layers=parse_list(args.layers, str, "--layers"))
    rows = []
    for path, clf in zip(paths, models):
        layers, _ = resolve_layers(clf, clf.preprocess(images[:2]), cfg)
        rows.append((_short_name(path), clf, layers))
    out = attention_figure(rows, images, attack.apply(images), args.out, data.classes)
    print(f"wrote {out}")
    return 0


def _short_name(path: str) -> str:
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        return p.name
    return p.parent.name if p.name == "model.safetensors" else p.stem
