"""``nad bench PRESET_OR_FILE --data DATA --out DIR [--quick] [--shard I/N]``: the command-line handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from nad.bench.config import load_bench
from nad.bench.grid import CellFilter, Shard
from nad.bench.run import run_bench
from nad.errors import NadError
from nad.io import check_out_dir


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise NadError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def run(args: argparse.Namespace) -> int:
    from nad.device import resolve_device

    cfg = load_bench(args.config, args.quick, args.data, args.test, parse_seeds(args.seeds), args.arch)
    shard, only = Shard.parse(args.shard), CellFilter.parse(args.only)
    out = check_out_dir(args.out, args.overwrite, resumable="bench.json")  # a bench folder is resumed
    device = resolve_device(args.device, args.deterministic)
    zoo = Path(args.zoo) if args.zoo else (Path("zoo") if Path("zoo").is_dir() else None)
    outcome = run_bench(cfg, out, shard, args.quiet, device, report_only=args.report_only, zoo=zoo, only=only)
    if args.report_only:
        print(f"{outcome.skipped} of {outcome.cells} cells finished; wrote " + ", ".join(map(str, outcome.files)))
        return 0
    part = f" (shard {shard.index}/{shard.count})" if shard.count > 1 else ""
    part += " matching --only" if only.wanted else ""
    print(
        f"{len(outcome.ran)} cells run, {outcome.skipped} already done, of {outcome.cells}{part}; "
        f"{outcome.trained} models trained; {outcome.seconds:.0f} s"
    )
    if outcome.failed:
        print(f"{len(outcome.failed)} cells diverged (NaN loss); they are marked 'failed' in the table")
    print("wrote " + ", ".join(str(f) for f in outcome.files))
    return 0
