"""What each ``nad`` command does, given its parsed arguments. Kept thin: the work is in ``nad.api``."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from nad import distributed
from nad.api import attack_for, check_fits, model_attack, train_model
from nad.attacks import parse_attack
from nad.config import load_yaml
from nad.data import ImageData, fingerprint, load_data
from nad.data.sources import DEFAULT_NORMALIZE, default_test_spec, parse_data_spec
from nad.data.stream import open_train_data
from nad.defenses.base import Defense
from nad.device import resolve_device
from nad.errors import NadError
from nad.io import check_out_dir, output_set, sibling, write_json
from nad.metrics import Scores, evaluate
from nad.models import Classifier, load_model, parse_normalize, save_model
from nad.report import erase_verdict
from nad.spec import config_rows, parse_list
from nad.training import NonFiniteLoss, TrainConfig, load_profile


def print_scores(rows: dict[str, Scores | None]) -> None:
    width = max(12, *(len(name) for name in rows))
    print(f"{'':{width}s} {'ACC %':>7s} {'ASR %':>7s}")
    for name, s in rows.items():
        if s is not None:
            asr = "-" if s.asr is None else f"{s.asr:7.2f}"
            print(f"{name:{width}s} {s.acc:7.2f} {asr:>7s}")


def run_train(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, args.deterministic)
    data = open_train_data(args.data, args.stream)
    spec = default_test_spec(args.data, args.test)
    test = load_data(spec, "test").to(device) if spec else None
    attack = attack_for(args.attack, data)
    asked = attack.spec() if attack else None  # before prepare() fills in what it generates (Trojan's trigger)
    kind, _, _ = parse_data_spec(args.data)
    normalize = parse_normalize(args.normalize or DEFAULT_NORMALIZE.get(kind, "none"))
    cfg = train_config(args)
    out = check_out_dir(args.out, args.overwrite or args.resume)
    stage = sibling(out, "partial")  # the run's files until it ends; --resume finds its training state here
    if not args.resume and distributed.is_main():
        shutil.rmtree(stage, ignore_errors=True)  # --overwrite without --resume starts afresh
    distributed.barrier()
    stage.mkdir(parents=True, exist_ok=True)
    state = stage / "train-state.pt"
    with keep_last_good_model(out, stage):
        result = train_model(
            data.to(device),
            args.arch,
            cfg,
            attack,
            test,
            normalize,
            args.arch_kwargs,
            args.quiet,
            state_path=state,
            workdir=stage,
        )
    if not distributed.is_main():
        return 0  # under torchrun only rank 0 writes and prints; the others wait for it at a barrier
    attack = result.attack
    summary: dict[str, Any] = {
        "scores": result.scores.to_json() if result.scores else None,
        "seconds": round(result.seconds, 1),
        "config": {
            "data": args.data,
            "arch": args.arch,
            "attack": attack.spec() if attack else None,
            "attack_asked": asked,
            "attack_version": type(attack).version if attack else None,
            "profile": args.profile,
            **asdict(cfg),
        },
        "data_fingerprint": fingerprint(data) if isinstance(data, ImageData) else None,
        "history": result.history.epochs,
        "poisoned": result.poisoned.tolist() if result.poisoned is not None else None,
    }
    state.unlink(missing_ok=True)  # finished: the model and results supersede the training state
    with output_set(out, stage=stage) as folder:
        save_model(result.model, folder)
        write_json(folder / "results.json", summary)
    print_scores({"model": result.scores})
    print(f"wrote {out}/model.safetensors in {result.seconds:.0f} s")
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """``--profile``'s recipe, with each of ``--epochs``, ``--batch-size``, ``--lr``, ``--precision`` and
    ``--channels-last`` that was given laid over it, and ``--seed``."""
    cfg = load_profile(args.profile)
    given = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
    }
    cfg = replace(cfg, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    return cfg if args.lr is None else replace(cfg, optim=replace(cfg.optim, lr=args.lr))


@contextlib.contextmanager
def keep_last_good_model(out: Path, stage: Path | None = None) -> Iterator[None]:
    """If training blows up, publish the rolled-back model as ``out`` and say where, instead of losing the run."""
    try:
        yield
    except NonFiniteLoss as exc:
        if distributed.is_main():
            with output_set(out, stage=stage) as folder:
                save_model(exc.model, folder, stem="last-good")
        distributed.barrier()  # else the other ranks' exit could make torchrun stop rank 0 while it saves
        raise NadError(f"{exc}; saved it as {out / 'last-good.safetensors'}") from None


def load_classifier(args: argparse.Namespace) -> Classifier:
    return load_model(args.model, args.arch, args.num_classes, args.normalize, args.arch_kwargs)


def run_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, args.deterministic)
    clf = load_classifier(args).to(device)
    test = load_data(args.data, "test")
    check_fits(clf, test)
    attack = model_attack(args.attack, clf, args.model, test)
    scores = evaluate(clf, test.to(device), attack)
    if args.json:
        print(json.dumps(scores.to_json()))
    else:
        print_scores({"model": scores})
    return 0


def defense_from_args(args: argparse.Namespace) -> Defense:
    """``--defense NAME[:key=value,...]`` with the run flags, built by ``nad.defenses.settings.defense_config``.

    ``--seed``, ``--precision``, ``--channels-last`` go to every schedule of the defense and ``--epochs`` to
    its main one; ``--teacher-epochs``, ``--layers``, ``--betas`` and ``--p`` to the fields of those names;
    ``key=value`` pairs set any field, nested ones with dots (``anp:iterations=500``,
    ``mcr:t=0.4,curve.epochs=50``). A flag the defense cannot honour is refused.
    """
    from nad.defenses import defense_class
    from nad.defenses.settings import RunSettings, defense_config

    settings = RunSettings(args.seed, args.precision, args.channels_last, args.epochs)
    fields = {
        "teacher_epochs": args.teacher_epochs,
        "layers": parse_list(args.layers, str, "--layers", required=args.layers is not None) or None,
        "betas": parse_list(args.betas, float, "--betas", required=args.betas is not None) or None,
        "p": args.p,
    }
    base = load_yaml(args.config) if getattr(args, "config", None) else None
    name, config = defense_config(args.defense, settings, fields, base=base)
    return defense_class(name)(config)


def print_registry(registry: dict[str, type], rows_of: Callable[[type], list[tuple[str, str, Any]]]) -> None:
    """Each entry's name, its module's first docstring paragraph (the paper), and its parameter rows."""
    import sys

    for name in sorted(registry):
        cls = registry[name]
        doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().split("\n\n")[0]
        print(f"{name}: {' '.join(doc.split())}")
        rows = rows_of(cls)
        width = max((len(key) for key, _, _ in rows), default=0)
        type_width = max((len(kind) for _, kind, _ in rows), default=0)
        for key, kind, default in rows:
            print(f"    {key:{width}s}  {kind:{type_width}s}  {default!r}")
        print()


def run_scan(args: argparse.Namespace) -> int:
    """``nad scan``: the verdict line, the per-class table, and with ``--out`` the JSON and trigger pictures."""
    from nad.api import select_clean
    from nad.scan import STRIPE_EPS, ScanConfig, format_table, scan
    from nad.viz import evidence_figure

    device = resolve_device(args.device, args.deterministic)
    clf = load_classifier(args).to(device)
    pool = load_data(args.clean, "train")
    check_fits(clf, pool, role="clean")
    out = check_out_dir(args.out, args.overwrite) if args.out else None
    clean = select_clean(pool.to(device), args.clean_ratio, args.seed, clf.info.num_classes)
    stripe_eps = STRIPE_EPS if args.stripes else 0.0
    warp_bound = 0.0 if args.no_warp else ScanConfig.warp_bound
    tone_amplitude = 0.0 if args.no_tones else ScanConfig.tone_amplitude
    cfg = ScanConfig(
        steps=args.steps,
        seed=args.seed,
        precision=args.precision,
        stripe_eps=stripe_eps,
        warp_bound=warp_bound,
        tone_amplitude=tone_amplitude,
    )
    result = scan(clf, clean, cfg, quiet=args.quiet)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"scanned with {len(clean)} clean images of {pool.name} in {result.seconds:.0f} s")
        print(format_table(result))
        print(result.verdict)
    if out is not None:
        with output_set(out) as folder:
            write_json(folder / "scan.json", {"model": str(args.model), "clean_size": len(clean), **result.to_json()})
            for c in result.flagged:
                evidence_figure(result, c, folder / f"trigger-class-{c}.png")
    return 0


def run_defenses(args: argparse.Namespace) -> int:
    from nad.defenses import DEFENSES

    print_registry(DEFENSES, lambda cls: config_rows(cls.Config()))
    print("set any of them with --defense NAME:key=value,group.key=value (e.g. anp:iterations=500)")
    return 0


def run_attacks(args: argparse.Namespace) -> int:
    if args.action == "show":
        return show_attack(args)
    if args.attack:
        raise NadError(f"nad attacks list takes no attack (to draw one: nad attacks show {args.attack} ...)")
    from nad.attacks import ATTACKS
    from nad.spec import describe

    print_registry(ATTACKS, describe)
    print("set any of them with --attack NAME:key=value,... (e.g. badnets:target=5,pattern=square)")
    print("draw one with nad attacks show NAME[:key=value,...] --data DATA --out FILE.png")
    return 0


def show_attack(args: argparse.Namespace) -> int:
    """``nad attacks show``: clean non-target images, their poisoned versions and the difference, as a PNG."""
    import torch

    from nad.viz import attack_figure

    if not args.attack:
        raise NadError(
            "nad attacks show: name the attack to draw, e.g. nad attacks show badnets --data digits --out x.png"
        )
    if not args.data or not args.out:
        raise NadError("nad attacks show needs --data DATA and --out FILE.png")
    out = Path(args.out)
    if out.is_dir():
        raise NadError(f"--out {out}: is a directory; give the PNG file to write")
    if not out.parent.is_dir():
        raise NadError(f"--out {out}: the folder {out.parent} does not exist")
    if args.count < 1:
        raise NadError(f"--count must be >= 1, got {args.count}")
    device = resolve_device(args.device, args.deterministic)
    attack = parse_attack(args.attack)
    data = load_data(args.data, "test")
    attack.check(data.num_classes, data.image_shape)
    data = data.to(device)
    attack = attack.prepare(data, None)
    pool = torch.nonzero(data.y.cpu() != attack.target).flatten()
    if len(pool) == 0:
        raise NadError(f"{data.name}: no images outside the target class {attack.target} to draw")
    gen = torch.Generator().manual_seed(args.seed)
    pick = pool[torch.randperm(len(pool), generator=gen)[: args.count]].to(device)
    clean, labels = data.x[pick], data.y[pick]
    poisoned = [("test-time", attack.apply(clean))]
    if attack.clean_label:
        train = attack.poison_images(clean, labels)
        if not torch.equal(train, poisoned[0][1]):
            poisoned.append(("training-time", train))
    names = [data.classes[i] if data.classes else str(i) for i in labels.tolist()]
    path = attack_figure(clean, poisoned, out, names, title=attack.spec())
    print(f"wrote {path}")
    return 0


#: Without test data, ``nad erase`` scores on the clean images it holds out: at least this many, at most that.
HELD_OUT_MIN, HELD_OUT_MAX = 100, 10_000


def erase_summary(
    result, args: argparse.Namespace, defense, attack, test: str | None, device, test_size: int | None = None
) -> dict[str, Any]:
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
            "test_size": test_size,
            "attack": attack.spec() if attack else None,
            "device": str(device),
            **asdict(defense.config),
        },
        "scan": result.evidence.to_json() if result.evidence else None,
        "seconds": round(result.seconds, 1),
        "log": result.log,
    }


def run_erase(args: argparse.Namespace) -> int:
    from nad.api import erase, fixed_subset, save_erase_outputs, scan_images, split_clean
    from nad.scan import ScanConfig

    device = resolve_device(args.device, args.deterministic)
    clf = load_classifier(args).to(device)
    pool = load_data(args.clean, "train")
    check_fits(clf, pool, role="clean")
    spec = default_test_spec(args.clean, args.test)
    test = load_data(spec, "test") if spec else None
    if test is not None:
        check_fits(clf, test)
        test = test.to(device)
    attack = model_attack(args.attack, clf, args.model, pool)
    defense = defense_from_args(args)
    out = check_out_dir(args.out, args.overwrite)
    clean, rest = split_clean(pool.to(device), args.clean_ratio, args.seed, clf.info.num_classes)
    every = " (all of them)" if len(rest) == 0 else f"; --clean-ratio {args.clean_ratio:g}, stratified by class"
    print(f"clean set: {len(clean)} of the {len(pool)} images of {args.clean}{every}")
    held_out = test is None and len(rest) >= HELD_OUT_MIN
    if held_out:  # no test data: the clean images the defense leaves out still measure the accuracy it keeps
        test, spec = fixed_subset(rest, HELD_OUT_MAX, args.seed), f"{args.clean} (held out of the clean set)"
    with keep_last_good_model(out):
        result = erase(
            clf,
            clean,
            defense,
            test,
            attack,
            baseline=not args.no_baseline,
            quiet=args.quiet,
            curve_subset=args.curves,
            tensorboard=Path(args.tensorboard) if args.tensorboard else None,
            scan_config=None if args.no_scan else ScanConfig(seed=args.seed, precision=args.precision or "fp32"),
            scan_data=scan_images(clean, rest, args.seed),
        )
    if not distributed.is_main():
        return 0  # under torchrun only rank 0 writes and prints; the others wait for it at a barrier
    summary = erase_summary(result, args, defense, attack, spec, device, len(test) if test is not None else None)
    summary["verdict"] = erase_verdict(summary, clf.info.num_classes)
    with output_set(out) as folder:
        save_erase_outputs(folder, clf, result, summary, test, attack)
    if test is None:
        print("no test data (give --test): scores were not measured")
    elif held_out:
        print(f"scored on {len(test)} clean images held out of the defense's set (give --test for a test set)")
    rows = {"before": result.before, summary["config"]["defense"]: result.after}  # as the verdict names it
    if defense.name != "finetune":
        rows["finetune"] = result.finetune
    print_scores(rows)
    if result.evidence is not None:
        print(f"scan before: {result.evidence.before.verdict}; after: {result.evidence.after.verdict}")
    for line in summary["verdict"]:
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout)
    print(f"wrote {out}/model.safetensors in {result.seconds:.0f} s")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from nad.demo import run_demo as demo

    out = check_out_dir(args.out, args.overwrite)
    device = str(resolve_device(args.device, args.deterministic))
    with output_set(out) as folder:
        trained, result = demo(folder, args.seed, args.quiet, device)
    print_scores({"before": result.before, "nad": result.after, "finetune": result.finetune})
    print(f"wrote {out}/results.json, {out}/attention.png and the models in {result.seconds + trained.seconds:.0f} s")
    return 0


def run_attention(args: argparse.Namespace) -> int:
    import torch

    from nad.defenses.nad import NADConfig, resolve_layers
    from nad.viz import attention_figure

    device = resolve_device(args.device, args.deterministic)
    paths = [args.model, *args.compare]
    models = [load_model(p, args.arch, args.num_classes, args.normalize, args.arch_kwargs).to(device) for p in paths]
    data = load_data(args.data, "test")
    for clf in models:
        check_fits(clf, data)
    attack = model_attack(args.attack, models[0], args.model, data)
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


def run_bench(args: argparse.Namespace) -> int:
    from nad.bench.command import run as bench

    return bench(args)
