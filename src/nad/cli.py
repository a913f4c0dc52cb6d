"""The ``nad`` command line: a thin layer over ``nad.api``.

Every problem with the input is reported as one line on stderr with exit code 2 (``--debug`` shows the
traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from nad.errors import NadError

#: Commands that run data-parallel under torchrun (see docs/distributed.md); others run alone in each process.
DISTRIBUTED_COMMANDS = ("train", "erase")
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str) -> Callable[[Callable[[argparse.ArgumentParser], None]], Any]:
    def wrap(
        add_args: Callable[[argparse.ArgumentParser], None],
    ) -> Callable[[argparse.ArgumentParser], None]:
        COMMANDS[name] = (add_args, help_text)
        return add_args

    return wrap


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument(
        "--deterministic", action="store_true", help="reproducible GPU runs: deterministic kernels, no TF32 (slower)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def model_args(p: argparse.ArgumentParser) -> None:
    """Options that describe a foreign checkpoint (a nad sidecar, when present, supplies them)."""
    p.add_argument("--arch", help="architecture of a foreign checkpoint: a registered name or file.py:Class")
    p.add_argument("--arch-kwargs", type=json_object, default=None, help="JSON, e.g. '{\"depth\": 28}'")
    p.add_argument("--num-classes", type=int, help="class count of a foreign checkpoint")
    p.add_argument("--normalize", help="input normalisation: none, cifar10, imagenet, gtsrb, or 'm,m,m;s,s,s'")


def json_object(text: str) -> dict[str, Any]:
    """An option's JSON object (``--arch-kwargs``); anything else is a usage error."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r:.60}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"depth\": 28}}', got {text!r:.60}")
    return value


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def precision_args(p: argparse.ArgumentParser, default: str | None = "fp32") -> None:
    """``--precision`` and ``--channels-last``; with ``default=None`` both are None unless given (a profile's)."""
    hint = "default fp32" if default else "default: the profile's"
    p.add_argument("--precision", choices=["fp32", "bf16"], default=default, help=f"bf16: autocast ({hint})")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True if default else None,
        help="channels-last layout for convolutions (default: on; the same arithmetic, faster)",
    )


def out_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--out", required=default is None, default=default, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="allow writing into an existing non-empty --out")


@command("train", "train a model, backdoored with --attack, from scratch")
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="cifar10:ROOT, npz:PATH, folder:PATH or digits")
    p.add_argument("--test", help="test data (default: the test split of --data, when it has one)")
    p.add_argument("--arch", required=True, help="registered architecture or file.py:Class")
    p.add_argument("--arch-kwargs", type=json_object, default=None, help="JSON, e.g. '{\"width\": 8}'")
    p.add_argument("--attack", help="attack spec, e.g. badnets:target=0,pattern=grid")
    p.add_argument(
        "--profile",
        default="cosine",
        help="training recipe: cosine (default), standard (the augmented step schedule of nad bench), "
        "reference (the NAD reference's train_badnet.py: no augmentation, fixed order, 19 epochs at lr 0.1)",
    )
    p.add_argument("--epochs", type=int, help="default: the profile's (cosine: 40)")
    p.add_argument("--batch-size", type=int, help="default: the profile's (cosine: 128)")
    p.add_argument("--lr", type=float, help="default: the profile's (0.1)")
    p.add_argument("--normalize", help="input normalisation (default: per dataset, e.g. cifar10)")
    p.add_argument("--seed", type=int, default=0)
    precision_args(p, default=None)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last epoch")
    p.add_argument("--stream", action="store_true", help="read a folder: dataset batch by batch (automatic when large)")
    out_args(p)
    common(p)


@command("erase", "purify a suspicious model with NAD (or another defense)")
def _erase_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file: nad .safetensors (with .json sidecar), or .pt/.pth/.tar")
    p.add_argument("--clean", required=True, help="clean data to draw the defense's set D from")
    p.add_argument("--clean-ratio", type=float, default=0.05, help="share of --clean used as D (default 0.05)")
    p.add_argument(
        "--defense",
        default="nad",
        help="defense name, optionally NAME:key=value,... (default nad; see nad defenses); nc unlearns the "
        "trigger the scan inverts, which removed backdoors that nad and finetune kept on models trained with "
        "augmentation (docs/defenses.md)",
    )
    p.add_argument(
        "--config",
        help="the defense's configuration as YAML: a file or a preset (e.g. nad-paper); flags override it",
    )
    p.add_argument("--layers", help="comma-separated qualified module names to distil")
    p.add_argument("--betas", help="comma-separated betas, one per layer")
    p.add_argument("--epochs", type=int, help="NAD/fine-tuning epochs (default 20)")
    p.add_argument("--teacher-epochs", type=int, help="teacher fine-tuning epochs (default 10)")
    p.add_argument("--p", type=float, help="attention power p (default 2)")
    p.add_argument("--test", help="test data (default: the test split of --clean, when it has one)")
    p.add_argument("--attack", help="attack spec to measure ASR (default: the one in the model's sidecar)")
    p.add_argument("--no-baseline", action="store_true", help="skip the fine-tuning baseline run")
    p.add_argument("--no-scan", action="store_true", help="skip the backdoor scan before and after (see nad scan)")
    p.add_argument(
        "--curves", type=non_negative, default=0, metavar="N", help="score every epoch on N test images (report)"
    )
    p.add_argument("--tensorboard", metavar="DIR", help="also log the per-epoch curves to TensorBoard in DIR")
    p.add_argument("--seed", type=int, default=0)
    precision_args(p, default=None)
    model_args(p)
    out_args(p)
    common(p)


@command(
    "scan", "look for a backdoor without knowing its trigger: trigger inversion and universal perturbations per class"
)
def _scan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file or folder (as for nad eval)")
    p.add_argument("--clean", required=True, help="clean data to scan with")
    p.add_argument("--clean-ratio", type=float, default=0.05, help="share of --clean used (default 0.05)")
    p.add_argument("--steps", type=int, default=150, help="trigger-inversion steps (default 150)")
    p.add_argument(
        "--stripes",
        action="store_true",
        help="let the stripe perturbations (24/255) flag a class on their own, not only with a tone: they see "
        "SIG-like triggers but raise false flags (docs/scan.md)",
    )
    p.add_argument(
        "--no-warp", action="store_true", help="skip the warp perturbations, the measure that sees WaNet-like triggers"
    )
    p.add_argument(
        "--no-tones",
        action="store_true",
        help="skip the tones (and their stripes), the measure that sees SIG-like triggers",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast (default fp32)")
    p.add_argument("--out", help="folder for scan.json and a picture of the evidence for each flagged class (PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--seed", type=int, default=0)
    model_args(p)
    common(p)


@command("defenses", "list the defenses nad erase --defense accepts, with their parameters and defaults")
def _defenses_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


@command("attacks", "list the attacks --attack accepts, with their parameters; or draw one on images (show)")
def _attacks_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show")
    p.add_argument("attack", nargs="?", help="show: the attack spec to draw, e.g. badnets:target=0")
    p.add_argument("--data", help="show: images to draw (a dataset's test split by default)")
    p.add_argument("--out", help="show: PNG file to write")
    p.add_argument("--count", type=int, default=6, help="show: how many non-target images (rows)")
    p.add_argument("--seed", type=int, default=0, help="show: which images are drawn")
    common(p)


@command("eval", "measure clean accuracy and attack success rate")
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("--data", required=True, help="test data (a dataset's test split by default)")
    p.add_argument("--attack", help="attack spec (default: the one in the model's sidecar)")
    p.add_argument("--json", action="store_true", help="print JSON")
    model_args(p)
    common(p)


@command("demo", "backdoor, then purify, a small model on the embedded digits (< 2 minutes)")
def _demo_args(p: argparse.ArgumentParser) -> None:
    out_args(p, default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    common(p)


@command("attention", "draw attention maps of one or more models on clean and triggered images")
def _attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("--compare", nargs="*", default=[], help="more models to draw below the first")
    p.add_argument("--data", required=True, help="images to draw (a dataset's test split by default)")
    p.add_argument("--attack", help="attack spec for the triggered columns (default: the model's own)")
    p.add_argument("--layers", help="comma-separated layers (default: the NAD layers of the architecture)")
    p.add_argument("--n", type=int, default=4, help="images per group (clean, triggered)")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn")
    p.add_argument("--out", required=True, help="PNG file to write")
    model_args(p)
    common(p)


@command("bench", "run a grid of attacks x defenses x clean ratios x seeds from a preset or YAML (resumable)")
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="preset (paper-cifar10, ablation-cifar10, paper-gtsrb) or YAML file")
    p.add_argument("--data", help="training data, e.g. cifar10:ROOT or gtsrb:ROOT (replaces the preset's)")
    p.add_argument("--test", help="test data (default: the test split of --data)")
    p.add_argument("--quick", action="store_true", help="the preset's quick variant: fewer epochs, less data")
    p.add_argument("--shard", help="I/N: run only the I-th of N parts of the grid (1 <= I <= N), e.g. for job arrays")
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUES",
        help="run only the cells whose study, attack, defense, seed or clean_ratio is one of VALUES "
        "(comma-separated); repeat for several keys, e.g. --only defense=nc --only attack=badnets,blend",
    )
    p.add_argument("--seeds", help="comma-separated seeds (replaces the preset's)")
    p.add_argument("--arch", help="architecture (replaces the preset's); the only way to bench a file.py:Class")
    p.add_argument(
        "--zoo",
        help="folder of trained models (nad train outputs) to take backdoored models from instead of training "
        "them, where one was trained exactly as the bench asks (default: ./zoo when it exists)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="run nothing: write results.md and report.html from finished cells"
    )
    out_args(p)
    common(p)


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line, like every other error of nad."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nad: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from nad import __version__

    parser = Parser(prog="nad", description="Erase backdoor triggers with Neural Attention Distillation.")
    parser.add_argument("--version", action="version", version=f"nad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nad import commands, distributed

    try:
        with distributed.session(args.command in DISTRIBUTED_COMMANDS):  # under torchrun; else nothing
            return getattr(commands, f"run_{args.command}")(args)
    except (NadError, OSError, MemoryError) as exc:  # bad input, or a file system or memory that refuses
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"nad: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (keeps Python from complaining at exit)
        return 0
    except Exception as exc:  # a bug of nad's, or an input it fails to check: one line, and how to see more
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            print(f"nad: internal error: {type(exc).__name__}: {one_line(exc)} (--debug shows where)", file=sys.stderr)
        return 1


def run() -> NoReturn:
    """The ``nad`` command: :func:`main`, then exit with its code.

    A process that torchrun started leaves without the interpreter's finalisation, as multiprocessing's
    workers do (``os._exit`` once the streams are flushed): the process group is already destroyed by then,
    but gloo's threads can still free tensors during finalisation, which aborts the process (SIGABRT,
    "terminate called without an active exception") after every output was written, and torchrun then
    reports the whole run failed.
    """
    code = main()
    from nad import distributed

    if distributed.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def one_line(exc: BaseException) -> str:
    """An exception as one line: an OSError with its file, anything else with newlines folded."""
    if isinstance(exc, MemoryError):
        return "out of memory (a smaller --batch-size, model or dataset may fit)"
    if isinstance(exc, OSError) and exc.strerror:
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        return f"{names}: {exc.strerror}" if names else exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
