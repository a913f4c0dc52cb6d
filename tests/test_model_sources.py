"""Models from libraries (``--arch timm:NAME``, ``torchvision:NAME``) and Hugging Face style folders."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import save_file
from test_cli import assert_one_line_error

from nad.cli import main
from nad.errors import NadError
from nad.models import create_model, load_model


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None and bool(__import__(name))
    except Exception:  # installed but built for another torch
        return False


HAS_TIMM = importable("timm")
HAS_TORCHVISION = importable("torchvision")


def hub_folder(tmp_path, config: dict, arch: str = "wrn16_1", num_classes: int = 10):
    folder = tmp_path / "hub"
    folder.mkdir(parents=True)
    weights = {k: v.contiguous() for k, v in create_model(arch, num_classes).state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


TIMM_CONFIG = {
    "architecture": "resnet18",
    "num_classes": 10,
    "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]},
}


def test_a_hub_folder_gives_its_normalisation_and_size_even_with_arch(tmp_path):
    clf = load_model(hub_folder(tmp_path, TIMM_CONFIG), arch="wrn16_1")
    assert clf.info.arch == "wrn16_1" and clf.info.num_classes == 10 and clf.info.input_size == (3, 32, 32)
    assert clf.info.normalize.mean == (0.5, 0.4, 0.3) and clf.info.normalize.std == (0.2, 0.2, 0.25)
    assert load_model(hub_folder(tmp_path / "b", TIMM_CONFIG), arch="wrn16_1", normalize="none").info.normalize is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**TIMM_CONFIG, "architecture": "../evil.py:Net"}, "no timm 'architecture' name"),
        ({**TIMM_CONFIG, "architecture": None}, "with --arch"),
        ({**TIMM_CONFIG, "num_classes": -1}, "num_classes"),
        ({**TIMM_CONFIG, "pretrained_cfg": {"input_size": [3, 99999, 32]}}, "input size"),
        ({**TIMM_CONFIG, "pretrained_cfg": {"mean": [0.5], "std": [0.0]}}, "std"),
        ({**TIMM_CONFIG, "pretrained_cfg": []}, "pretrained_cfg"),
        ([1, 2], "JSON object"),
    ],
)
def test_a_hostile_hub_config_is_refused(tmp_path, config, message):
    with pytest.raises(NadError, match=message):
        load_model(hub_folder(tmp_path, config))


@pytest.mark.skipif(HAS_TIMM, reason="timm is installed here")
def test_a_timm_model_without_timm_is_one_clear_line(tmp_path, capsys):
    folder = hub_folder(tmp_path, {**TIMM_CONFIG, "architecture": "convnext_tiny.fb_in1k"})
    assert main(["eval", str(folder), "--data", "digits"]) == 2
    assert_one_line_error(capsys, "--arch timm:convnext_tiny.fb_in1k", "pip install 'nad[timm]'")


def timm_resnet_folder(tmp_path, name: str = "resnet18.a1_in1k"):
    """A folder as timm publishes a ResNet-18 (its ``config.json`` keys), for 16x16 grey images."""
    folder = tmp_path / "timm-resnet18"
    folder.mkdir()
    weights = create_model("resnet18", num_classes=10, in_channels=1).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    config = {"architecture": name, "num_classes": 10, "num_features": 512, "global_pool": "avg", "in_chans": 1,
              "pretrained_cfg": {"tag": "a1_in1k", "input_size": [1, 16, 16], "interpolation": "bicubic",
                                 "mean": [0.5], "std": [0.5], "classifier": "fc"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_timm_resnet_folder_is_purified_through_the_cli_without_timm(tmp_path, capsys):
    argv = ["erase", str(timm_resnet_folder(tmp_path)), "--clean", "digits", "--epochs", "1", "--teacher-epochs", "1"]
    # at 16x16 the ImageNet stem leaves layer3 and layer4 1x1, so the registered layers give way to automatic ones
    argv += ["--no-scan", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "clean set: 70 of the 1438 images" in out and "clean accuracy:" in out
    assert "WARNING: clean accuracy" in err  # untrained weights: near chance, and the terminal says so
    clf = load_model(tmp_path / "out")
    assert clf.info.arch == "resnet18" and clf.info.input_size == (1, 16, 16) and clf.info.normalize.mean == (0.5,)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["log"]["layers"] == ["conv1", "layer1", "layer2"]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_nad_resnets_compute_what_the_libraries_do(name, library):
    if not (HAS_TIMM if library == "timm" else HAS_TORCHVISION):
        pytest.skip(f"needs {library} built for this torch")
    import timm
    import torchvision

    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=10) if library == "timm" else getattr(torchvision.models, name)(10)
    for bn in (m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.data.uniform_(0.5, 1.5)
    ours = create_model(name, num_classes=10)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is importable here")
def test_a_torchvision_arch_without_torchvision_is_one_clear_line(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--arch", "torchvision:resnet18", "--epochs", "1", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert_one_line_error(capsys, "torchvision", "pip install 'nad[torchvision]'")


@pytest.mark.skipif(not HAS_TIMM, reason="needs timm (pip install 'nad[timm]')")
def test_a_timm_hub_folder_is_purified_through_the_cli(tmp_path, capsys):
    import timm

    folder = tmp_path / "timm"
    folder.mkdir()
    model = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"architecture": "resnet18", "num_classes": 10, "in_chans": 1,
              "pretrained_cfg": {"input_size": [1, 16, 16], "mean": [0.5], "std": [0.5]}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    argv = ["erase", str(folder), "--clean", "digits", "--epochs", "1", "--teacher-epochs", "1", "--no-scan"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "clean set: 70 of the 1438 images" in capsys.readouterr().out
    assert load_model(tmp_path / "out").info.arch == "timm:resnet18"


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torchvision built for this torch")
def test_a_torchvision_arch_builds():
    model = create_model("torchvision:resnet18", num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_user_architecture_is_recorded_by_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=1):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())\n"
        "        self.head = nn.Linear(16, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x).mean((2, 3)))\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", "digits", "--arch", "mynet.py:Net", "--epochs", "1", "--out", "m", "--quiet"]
    assert main([*argv, "--device", "cpu"]) == 0
    sidecar = json.loads((tmp_path / "m" / "model.json").read_text())
    assert sidecar["arch"] == f"{tmp_path / 'mynet.py'}:Net" and sidecar["input_size"] == [1, 16, 16]
