"""``kill -9`` trials of ``nad erase --overwrite``: does a reader ever find a mixed output set?

Each trial starts ``nad erase --overwrite`` into a folder holding a finished set, kills it with SIGKILL at a
random moment of its run, and checks that the folder holds one whole set (``nad.io.verify_output_set``:
exactly the files its manifest lists, with those contents), and which one (old or new). After the trials one
more run goes to the end, and every temporary folder a killed run left beside the output must be gone.
Run from the repository root: ``python -m benchmarks.kill_trials [--trials 20]``; the test suite runs a few.
It prints the counts as JSON and writes them to ``benchmarks/results/kill-trials.json``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nad.io import MANIFEST, verify_output_set


@dataclass
class TrialReport:
    trials: int = 0
    whole_old: int = 0  # the kill came before the swap: the earlier set is intact
    whole_new: int = 0  # the kill came after it: the new set is whole
    mixed: int = 0  # a folder that is neither (the failure this guards against)
    strays_after_kill: list[int] = field(default_factory=list)  # temporary folders beside the output
    strays_after_final_run: int = 0
    run_seconds: float = 0.0


def erase_command(model: Path, out: Path, seed: int) -> list[str]:
    return [
        sys.executable, "-m", "nad", "erase", str(model), "--clean", "digits", "--out", str(out), "--overwrite",
        "--epochs", "2", "--teacher-epochs", "1", "--seed", str(seed), "--quiet", "--device", "cpu", "--no-scan",
    ]  # fmt: skip


def strays(out: Path) -> int:
    return sum(1 for _ in out.parent.glob(f".{out.name}.nad-*"))


def manifest_of(out: Path) -> str:
    return (out / MANIFEST).read_text() if (out / MANIFEST).is_file() else ""


def run_trials(model: Path, out: Path, trials: int, seed: int = 0) -> TrialReport:
    """``trials`` kills at uniform random moments of a run (timed once, to the end, first)."""
    report = TrialReport()
    start = time.perf_counter()
    subprocess.run(erase_command(model, out, 10_000), check=True, capture_output=True)
    report.run_seconds = time.perf_counter() - start
    rng = random.Random(seed)
    for trial in range(trials):
        before = manifest_of(out)
        proc = subprocess.Popen(erase_command(model, out, trial), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, report.run_seconds * 1.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report.trials += 1
        if not verify_output_set(out):
            report.mixed += 1
        elif manifest_of(out) == before:
            report.whole_old += 1
        else:
            report.whole_new += 1
        report.strays_after_kill.append(strays(out))
    subprocess.run(erase_command(model, out, 20_000), check=True, capture_output=True)
    report.strays_after_final_run = strays(out)
    return report


def main() -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only (the test suite's runs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        train = [sys.executable, "-m", "nad", "train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets"]
        subprocess.run([*train, "--epochs", "2", "--out", str(model), "--quiet"], check=True, capture_output=True)
        report = run_trials(model, Path(tmp) / "clean", args.trials, args.seed)
    if args.no_save:
        print(json.dumps(report.__dict__))
    else:
        from benchmarks.common import report as save

        save("kill-trials", report.__dict__)


if __name__ == "__main__":
    main()
