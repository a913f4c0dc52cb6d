"""Attention pictures and reports: files that decode, and attention that measurably sits on the trigger."""

from __future__ import annotations

import html.parser
import json
import re

import pytest
import torch
from PIL import Image

from nad.attacks import parse_attack
from nad.attention import attention_map, capture
from nad.cli import main
from nad.data import load_data


@torch.no_grad()
def region_share(
    model: torch.nn.Module, inputs: torch.Tensor, layer: str, mask: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    """Per image, the share of a layer's attention that falls inside ``mask`` (H, W) of the input.

    The normalised map's squares sum to 1, so they are a distribution over the layer's positions; it is
    spread (nearest) onto the input grid and summed over the mask. A model that looks at the region as
    much as anywhere else gives the mask's area share; a backdoored model looks far more at its trigger.
    """
    (features,) = capture(model, inputs, [layer])
    h, w = features.shape[2:]
    weights = attention_map(features, p).pow(2).view(len(inputs), 1, h, w)
    spread = torch.nn.functional.interpolate(weights, size=tuple(mask.shape), mode="nearest") * (h * w / mask.numel())
    return (spread.squeeze(1) * mask.to(spread.device)).sum((1, 2))


def trigger_mask(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(height, width)
    mask[height - 3 :, width - 3 :] = 1  # the default BadNets grid: the bottom-right 3x3 corner
    return mask


def test_backdoored_attention_sits_on_the_trigger_and_nad_moves_it(demo_run):
    _, trained, erased = demo_run
    test = load_data("digits:test")
    triggered = parse_attack("badnets").test_set(test)
    mask = trigger_mask(16, 16)
    area = float(mask.mean())
    backdoored = trained.model
    before = region_share(backdoored.module, backdoored.preprocess(triggered.x), "block1", mask).mean()
    clean = region_share(backdoored.module, backdoored.preprocess(test.x), "block1", mask).mean()
    after = region_share(erased.model.module, erased.model.preprocess(triggered.x), "block1", mask).mean()
    # The trigger covers 3.5% of the image; the backdoored model puts far more of its attention there.
    assert before > 5 * area
    assert clean < 2 * area
    assert after < before / 3


def test_region_share_of_a_uniform_map_is_the_area_share():
    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    x = torch.ones(2, 3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:2, :4] = 1
    share = region_share(Flat(), x, "body", mask)
    assert torch.allclose(share, torch.full((2,), 8 / 64))


class _Checker(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")


def test_demo_writes_a_self_contained_report_and_figure(demo_run):
    out, _, _ = demo_run
    page = (out / "report.html").read_text()
    checker = _Checker()
    checker.feed(page)
    assert len(checker.images) == 2 and all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from elsewhere
    for needle in ("before", "after", "fine-tuning", "Configuration"):
        assert needle in page
    with Image.open(out / "attention.png") as img:
        img.verify()
    with Image.open(out / "attention.png") as img:
        # 8 image columns, 1 input row + 3 layers x 2 models
        assert img.format == "PNG" and img.width > 800 and img.height > 7 * 100


def test_attention_command_draws_one_png_per_call(demo_run, tmp_path):
    out, _, _ = demo_run
    target = tmp_path / "att.png"
    code = main(
        [
            "attention",
            str(out / "backdoored.safetensors"),
            "--compare",
            str(out),
            "--data",
            "digits",
            "--n",
            "2",
            "--out",
            str(target),
            "--quiet",
        ]
    )
    assert code == 0
    with Image.open(target) as img:
        assert img.format == "PNG"
        # 4 columns (2 clean, 2 triggered) and 7 rows at 100 dpi
        assert img.size[0] < img.size[1] * 2 and img.size[1] >= 7 * 100


def test_erase_logs_the_curves_to_tensorboard(demo_run, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out, _, _ = demo_run
    logs = tmp_path / "tb"
    argv = ["erase", str(out / "backdoored.safetensors"), "--clean", "digits", "--no-baseline", "--no-scan"]
    argv += ["--epochs", "3"]
    argv += ["--teacher-epochs", "2", "--curves", "50", "--tensorboard", str(logs), "--out", str(tmp_path / "e")]
    assert main([*argv, "--quiet"]) == 0
    runs = event_accumulator.EventAccumulator(str(logs))
    runs.Reload()
    tags = set(runs.Tags()["scalars"])
    assert {"student/acc", "student/asr", "student/ce", "student/at"} <= tags, tags
    assert [e.step for e in runs.Scalars("student/acc")] == [1, 2, 3]
    assert len(runs.Scalars("teacher/acc")) == 2, sorted(tags)
    curves = json.loads((tmp_path / "e" / "results.json").read_text())["curves"]
    logged = [round(e.value, 2) for e in runs.Scalars("student/acc")]
    assert logged == [round(r["acc"], 2) for r in curves["student"]]  # the same numbers as the report's curves
    final = json.loads((tmp_path / "e" / "results.json").read_text())["after"]
    assert [round(e.value, 2) for e in runs.Scalars("final/acc")] == [round(final["acc"], 2)]


def test_tensorboard_gets_the_hyperparameters_with_the_final_scores(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from nad.api import CurveRecorder, hyperparameters
    from nad.defenses import NADConfig

    hparams = hyperparameters(NADConfig())
    assert hparams["teacher_epochs"] == 10 and hparams["train.optim.lr"] == 0.1 and hparams["layers"] == ""
    recorder = CurveRecorder(tensorboard=tmp_path)
    recorder.close(hparams, {"final/acc": 81.5, "final/asr": None})
    runs = event_accumulator.EventAccumulator(str(tmp_path))
    runs.Reload()
    assert [e.value for e in runs.Scalars("final/acc")] == [81.5] and "final/asr" not in runs.Tags()["scalars"]
