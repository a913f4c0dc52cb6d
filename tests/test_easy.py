"""``nad.erase`` and ``nad.scan_model`` on plain PyTorch: any nn.Module, a TensorDataset, a dataset of PIL images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import nad
from nad.data import load_data
from nad.defenses import NAD, NADConfig
from nad.errors import NadError
from nad.scan import ScanConfig
from nad.training import TrainConfig


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride > 1 else None
        )

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    """torchvision's ResNet layout and module names (conv1, bn1, layer1..layer3, fc), at toy width."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # Widths of 16 and more: torch 2.13's CPU kernel for a 1x1 stride-2 convolution's backward in
        # channels-last layout crashes on 8 input channels and an odd batch (see README, Troubleshooting).
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 32, 2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


class PILDigits(Dataset):
    """A map-style dataset of (PIL image, int) pairs, as torchvision's datasets yield them without transforms."""

    def __init__(self, count: int) -> None:
        self.data = load_data("digits")
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        return Image.fromarray(self.data.x[i, 0].numpy()), int(self.data.y[i])


@pytest.fixture(scope="module")
def digits_floats():
    data = load_data("digits")
    return TensorDataset(data.x.float() / 255, data.y)


def test_erase_takes_any_module_and_a_tensor_dataset(digits_floats):
    torch.manual_seed(0)
    model = TinyResNet()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    defense = NAD(NADConfig(teacher_epochs=1, train=TrainConfig(epochs=1)))
    result = nad.erase(model, digits_floats, defense, normalize="digits", test=digits_floats, clean_ratio=0.1)
    assert result.clean_size == pytest.approx(0.1 * len(digits_floats), abs=10)
    assert result.log["layers"] == ["layer1", "layer2", "layer3"]  # found on a module nad never registered
    assert 0 <= result.after.acc <= 100 and result.finetune is not None
    assert result.model.module is not model and isinstance(result.model.module, TinyResNet)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # the caller's model is kept


def test_erase_reads_a_map_style_dataset_of_pil_images(digits_floats):
    model = TinyResNet()
    result = nad.erase(model, PILDigits(300), "finetune:epochs=1", normalize=((0.5,), (0.5,)), baseline=False)
    assert result.clean_size == 300 and result.before is None
    assert nad.as_image_data(PILDigits(5)).x.dtype == torch.uint8
    assert torch.equal(nad.as_image_data(PILDigits(5)).x, load_data("digits").x[:5])


def test_scan_model_on_a_plain_module(digits_floats):
    result = nad.scan_model(TinyResNet(), digits_floats, normalize="digits", config=ScanConfig(steps=3, uap_steps=2))
    assert len(result.norms) == 10 and result.verdict


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.randn(20, 1, 16, 16), r"outside \[0, 1\]"),
        (torch.zeros(20, 16, 16, 1, 1), r"expected \(N, C, H, W\)"),
        (torch.zeros(20, 1, 16, 16, dtype=torch.int32), "dtype"),
        (torch.full((20, 1, 16, 16), float("nan")), "outside"),
    ],
)
def test_bad_images_are_refused(images, message):
    with pytest.raises(NadError, match=message):
        nad.as_image_data(TensorDataset(images, torch.zeros(20, dtype=torch.long)))


def test_bad_inputs_are_refused(digits_floats):
    with pytest.raises(NadError, match=r"nn\.Module"):
        nad.erase("not a model", digits_floats)
    with pytest.raises(NadError, match="map-style"):
        nad.erase(TinyResNet(), 42)
    with pytest.raises(NadError, match="fails on the data"):
        nad.erase(nn.Linear(3, 10), digits_floats)
    with pytest.raises(NadError, match="channel"):
        nad.erase(TinyResNet(), digits_floats, normalize="cifar10")
    with pytest.raises(NadError, match="outputs"):
        nad.erase(nn.Sequential(nn.Flatten(), nn.Linear(256, 3)), digits_floats)
    with pytest.raises(NadError, match="did you mean nad"):
        nad.erase(TinyResNet(), digits_floats, "nda")


def test_version():
    assert nad.__version__ and nad.__version__[0].isdigit()
    with pytest.raises(AttributeError):
        nad.no_such_function  # noqa: B018
