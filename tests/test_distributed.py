"""Data-parallel training under torchrun (gloo on the CPU), sharding, and the streamed image-folder path.

The torchrun tests start 2 processes with ``python -m torch.distributed.run`` on the embedded digits.
What a 2-process run should equal: with the same global batch and seed, both runs see the same images in
the same global batches with the same augmentation, and DDP averages the two half-batch gradients into the
whole batch's. Two things still differ:

- BatchNorm normalises each rank's 64 images by their own statistics instead of all 128 (no SyncBatchNorm),
  so ``small_cnn``'s losses drift apart by a few thousandths per epoch (measured: 0.004 after 2 epochs;
  another seed moves them by 0.04). Tolerance: 0.03 per epoch mean loss.
- Floating-point sums are taken in another order. With a model without BatchNorm (GroupNorm is per image)
  that is the only difference: measured 1e-5 on the epoch losses and 7e-4 on any weight after 24 SGD steps
  (rounding differences grow a little with every step). Tolerances: 1e-3 and 1e-2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
import torch
from safetensors.torch import load_file
from torch import distributed as dist

from nad import distributed
from nad.cli import main
from nad.data.augment import Augment, augment_batch
from nad.data.sources import load_digits
from nad.errors import NadError
from nad.training import EpochBatches, batches

TORCHRUN_TIMEOUT = 300  # seconds; a hang fails the test instead of the suite
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)
TRAIN = ["train", "--data", "digits", "--attack", "badnets:target=0", "--epochs", "2", "--quiet", "--device", "cpu"]

PLAIN_CNN = '''
from torch import nn


def stage(c_in, c_out, stride):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(4, c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, 1, 1), nn.GroupNorm(4, c_out), nn.ReLU(),
    )


class PlainCNN(nn.Module):
    """small_cnn with GroupNorm: nothing depends on which images share a batch."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.block1, self.block2, self.block3 = stage(1, 16, 1), stage(16, 32, 2), stage(32, 64, 2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.block3(self.block2(self.block1(x))).mean((2, 3)))
'''


def loopback_env() -> dict[str, str]:
    """Gloo on the loopback interface, whatever the host name resolves to.

    Without it, gloo binds to the address of the machine's host name and torchrun gives that name to the
    workers; on a machine whose name resolves to an address the processes cannot reach, they wait for each
    other until the timeout instead of meeting.
    """
    names = {name for _, name in socket.if_nameindex()}
    return {"GLOO_SOCKET_IFNAME": "lo"} if "lo" in names else {}


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["--local-addr", "127.0.0.1"]  # the rendezvous address the workers dial: no host-name lookup
    return run_with_deadline([*command, "-m", "nad", *args])


def run_with_deadline(command: list[str], timeout: float = TORCHRUN_TIMEOUT) -> subprocess.CompletedProcess:
    """``command`` with gloo on the loopback, failed (with its output) if it has not ended after ``timeout``.

    A session of its own, so that a hang kills its children too: killing torchrun alone would leave the
    workers holding the output pipes, and reading those would wait for the workers' own (10 min) timeout.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", **loopback_env()}
    with subprocess.Popen(command, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{command[1:4]} did not finish within {timeout} s:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def losses(out: Path) -> list[float]:
    return [epoch["ce"] for epoch in json.loads((out / "results.json").read_text())["history"]]


# -- sharding, in one process -----------------------------------------------------------------------------


def test_shards_are_equal_disjoint_and_cover_the_batch():
    index = torch.randperm(10)
    shards = [distributed.shard_indices(index, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # cut to a multiple of the world: equal steps on every rank
    assert sorted(torch.cat(shards).tolist()) == sorted(index[:9].tolist())
    assert torch.equal(distributed.shard_indices(index, 0, 1), index)


def test_each_epoch_the_ranks_split_the_single_process_batches(monkeypatch):
    """Per step, the ranks' batches are disjoint halves of the 1-process batch; per epoch they cover it."""
    single = list(batches(101, 16, torch.Generator().manual_seed(3)))
    per_rank = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        per_rank.append(list(EpochBatches(101, 16, torch.Generator().manual_seed(3))))
    assert len(per_rank[0]) == len(per_rank[1]) == len(single)
    for whole, a, b in zip(single, *per_rank):
        assert len(a) == len(b) == len(whole) // 2
        assert not set(a.tolist()) & set(b.tolist())
        assert set(a.tolist()) | set(b.tolist()) == set(whole[: len(whole) // 2 * 2].tolist())
    assert len(set(torch.cat(per_rank[0] + per_rank[1]).tolist())) == 100  # 101 images, 1 odd one left out


def test_a_share_of_the_batch_is_augmented_as_in_the_whole_batch():
    x = torch.randint(1, 256, (12, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = augment_batch(x, Augment(), torch.Generator().manual_seed(1))
    for r in range(3):
        share = augment_batch(x[r::3], Augment(), torch.Generator().manual_seed(1), (r, 3))
        assert torch.equal(share, whole[r::3])


def test_outside_torchrun_everything_is_a_single_process():
    assert not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, torch.device("cpu")) is module
    with distributed.session():
        assert not distributed.active()


# A gloo group of one inside the test process could hang it where no timeout reaches (a C call holding
# the GIL), so this check runs in a child process that is killed if it does not end.
HOOKS_THROUGH_DDP = """
import datetime, faulthandler, sys
import torch
from torch import distributed as dist
from nad.attention import FeatureHooks
from nad.defenses.nad import AttentionDistillationLoss
from nad.models import create_model

faulthandler.dump_traceback_later(100, exit=True)  # a hang prints every thread's stack before the kill
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
try:
    torch.manual_seed(0)
    student, teacher = create_model("small_cnn", 10, 1, width=4), create_model("small_cnn", 10, 1, width=4)
    teacher.eval().requires_grad_(False)
    wrapped = torch.nn.parallel.DistributedDataParallel(student)
    layers = ("block1", "block2", "block3")
    with AttentionDistillationLoss(student, teacher, layers, (1.0, 1.0, 1.0), 2.0, "sum") as loss_fn:
        terms = loss_fn(wrapped, torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]))
        sum(terms.values()).backward()
    assert float(terms["at"].detach()) > 0, terms
    assert all(p.grad is not None for p in student.parameters())
    assert FeatureHooks(wrapped, ["block2"]).modules["block2"] is student.block2  # found under module.
finally:
    dist.destroy_process_group()
print("ok")
"""


@needs_gloo
def test_nad_hooks_work_through_real_ddp():
    """The student's hooks sit on the plain module; the DDP-wrapped forward fires them, and gradients flow."""
    run = run_with_deadline([sys.executable, "-c", HOOKS_THROUGH_DDP], timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


# -- two processes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "out"
    return out, torchrun(*TRAIN, "--arch", "small_cnn", "--out", str(out))


@needs_gloo
@pytest.mark.slow
def test_two_processes_train_and_rank_zero_writes_one_model(two_process_run):
    out, run = two_process_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.json", "model.safetensors", "results.json"]
    assert run.stdout.count("wrote ") == 1  # only rank 0 prints
    ce = losses(out)
    assert len(ce) == 2 and ce[1] < ce[0] - 0.1, ce
    scores = json.loads((out / "results.json").read_text())["scores"]
    assert 0 <= scores["acc"] <= 100 and 0 <= scores["asr"] <= 100


@needs_gloo
@pytest.mark.slow
def test_two_processes_match_one_within_batchnorm_noise(two_process_run, tmp_path):
    out, run = two_process_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert main([*TRAIN, "--arch", "small_cnn", "--out", str(tmp_path / "one")]) == 0
    one, two = losses(tmp_path / "one"), losses(out)
    assert max(abs(a - b) for a, b in zip(one, two)) < 0.03, (one, two)


@needs_gloo
@pytest.mark.slow
def test_without_batchnorm_two_processes_match_one_up_to_rounding(tmp_path):
    arch = tmp_path / "plain.py"
    arch.write_text(PLAIN_CNN)
    argv = [*TRAIN, "--arch", f"{arch}:PlainCNN"]
    run = torchrun(*argv, "--out", str(tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-3, (one, two)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-2


@needs_gloo
@pytest.mark.slow
def test_two_processes_erase(two_process_run, tmp_path):
    model, _ = two_process_run
    args = ["--clean", "digits", "--clean-ratio", "0.2", "--epochs", "2", "--teacher-epochs", "1", "--device", "cpu"]
    args.append("--no-scan")
    run = torchrun("erase", str(model / "model.safetensors"), *args, "--quiet", "--out", str(tmp_path / "erased"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1
    result = json.loads((tmp_path / "erased" / "results.json").read_text())
    assert result["after"]["acc"] >= 0 and len(result["log"]["history"]) == 2
    assert (tmp_path / "erased" / "model.safetensors").is_file()


@needs_gloo
@pytest.mark.slow
def test_an_error_on_the_ranks_ends_the_run(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    run = torchrun(*TRAIN, "--arch", "small_cnn", "--out", str(tmp_path / "busy"))
    assert run.returncode != 0 and "nad: error: --out" in run.stderr


# -- streamed image folders ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    data = load_digits("train")
    for i in range(160):
        folder = root / f"c{int(data.y[i])}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(data.x[i, 0].numpy()).save(folder / f"{i:04d}.png")
    return root


def test_a_streamed_folder_trains_exactly_like_the_loaded_one(digit_folder, tmp_path):
    argv = ["train", "--data", f"folder:{digit_folder}", "--arch", "small_cnn", "--attack", "badnets:target=0"]
    argv += ["--epochs", "1", "--batch-size", "32", "--quiet", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "memory")]) == 0
    assert main([*argv, "--stream", "--out", str(tmp_path / "stream")]) == 0
    memory = json.loads((tmp_path / "memory" / "results.json").read_text())
    stream = json.loads((tmp_path / "stream" / "results.json").read_text())
    assert stream["poisoned"] == memory["poisoned"] and stream["history"] == memory["history"]
    a, b = load_file(tmp_path / "memory" / "model.safetensors"), load_file(tmp_path / "stream" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stream_is_chosen_above_the_size_threshold_and_refused_where_it_cannot_work(digit_folder, monkeypatch):
    from nad.attacks import parse_attack
    from nad.data import stream

    assert isinstance(stream.open_train_data(f"folder:{digit_folder}"), stream.ImageData)
    monkeypatch.setattr(stream, "STREAM_BYTES", 1000)
    data = stream.open_train_data(f"folder:{digit_folder}")
    assert isinstance(data, stream.StreamData) and len(data) == 160 and data.image_shape == (3, 16, 16)
    with pytest.raises(NadError, match="--stream reads image folders"):
        stream.open_train_data("digits", stream=True)
    with pytest.raises(NadError, match="whole training set in memory"):
        parse_attack("wanet:target=0").poison_stream(data)
