"""Attention maps, the attention loss, layer checks, and forward hooks by qualified module name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nad.attention import (
    FeatureHooks,
    attention_loss,
    attention_map,
    auto_layers,
    check_layers,
    find_module,
    layer_shapes,
)
from nad.errors import NadError
from nad.models import create_model

# -- attention maps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_attention_map_is_unit_norm_per_sample(p, reduce):
    feats = torch.randn(5, 8, 6, 7)
    amap = attention_map(feats, p=p, reduce=reduce)
    assert amap.shape == (5, 6 * 7)
    torch.testing.assert_close(amap.norm(dim=1), torch.ones(5))
    assert (amap >= 0).all()


def test_attention_map_matches_definition():
    feats = torch.randn(3, 4, 5, 5)
    expected = feats.abs().pow(2).sum(1).flatten(1)
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(attention_map(feats), expected)


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_attention_map_is_invariant_to_channel_permutation(p):
    feats = torch.randn(4, 16, 5, 5)
    perm = torch.randperm(16)
    assert not torch.equal(perm, torch.arange(16))
    torch.testing.assert_close(attention_map(feats[:, perm], p=p), attention_map(feats, p=p))


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_mean_and_sum_give_the_same_normalised_map(p):
    feats = torch.randn(4, 12, 6, 6)
    torch.testing.assert_close(attention_map(feats, p=p, reduce="mean"), attention_map(feats, p=p, reduce="sum"))


def test_different_powers_give_different_maps():
    feats = torch.randn(2, 8, 5, 5)
    assert not torch.allclose(attention_map(feats, p=1.0), attention_map(feats, p=4.0))


def test_attention_map_of_zeros_is_finite():
    amap = attention_map(torch.zeros(2, 3, 4, 4))
    assert torch.isfinite(amap).all()


def test_attention_map_needs_4d_features():
    with pytest.raises(NadError, match="B, C, H, W"):
        attention_map(torch.randn(2, 3, 4))


def test_attention_loss_zero_for_identical_features():
    feats = torch.randn(4, 8, 5, 5)
    assert float(attention_loss(feats, feats.clone())) == 0.0
    # A positive rescaling of a feature map does not change its normalised attention.
    assert float(attention_loss(feats, 3.0 * feats)) == pytest.approx(0.0, abs=1e-12)


def test_attention_loss_positive_for_different_features():
    a, b = torch.randn(4, 8, 5, 5), torch.randn(4, 8, 5, 5)
    loss = attention_loss(a, b)
    assert loss.ndim == 0
    assert float(loss) > 0


def test_attention_loss_gives_gradients_to_the_student():
    student = torch.randn(2, 4, 5, 5, requires_grad=True)
    teacher = torch.randn(2, 4, 5, 5)
    attention_loss(student, teacher).backward()
    assert student.grad is not None
    assert student.grad.abs().sum() > 0


# -- layer checks and lookup ------------------------------------------------------------------------


def test_check_layers_refuses_a_1x1_layer_and_names_it():
    model = create_model("small_cnn", 10, 3)
    sample = torch.randn(2, 3, 4, 4)  # block1: 4x4, block2: 2x2, block3: 1x1
    check_layers(model, sample, ["block1", "block2"])
    with pytest.raises(NadError, match="1x1") as info:
        check_layers(model, sample, ["block1", "block3"])
    assert "'block3'" in str(info.value)


def test_check_layers_refuses_a_non_spatial_layer():
    model = create_model("small_cnn", 10, 3)
    with pytest.raises(NadError, match="'fc'"):
        check_layers(model, torch.randn(2, 3, 16, 16), ["fc"])


def test_check_layers_restores_training_mode():
    model = create_model("small_cnn", 10, 3).train()
    check_layers(model, torch.randn(2, 3, 16, 16), ["block2"])
    assert model.training
    model.eval()
    check_layers(model, torch.randn(2, 3, 16, 16), ["block2"])
    assert not model.training


def test_find_module_suggests_close_names():
    model = create_model("wrn16_1", 10, 3)
    with pytest.raises(NadError, match="did you mean") as info:
        find_module(model, "blok2")
    assert "block2" in str(info.value)


def test_find_module_unknown_name_without_suggestion():
    model = create_model("small_cnn", 10, 3)
    with pytest.raises(NadError, match="no layer named 'zzzzzzzzzz'"):
        find_module(model, "zzzzzzzzzz")


def test_find_module_refuses_the_empty_name():
    with pytest.raises(NadError):
        find_module(create_model("small_cnn", 10, 3), "")


# -- hooks on nested qualified names ----------------------------------------------------------------


def _assert_hooks_removed(hooks: FeatureHooks) -> None:
    for module in hooks.modules.values():
        assert len(module._forward_hooks) == 0


WRN_SHAPES = {
    "block1": (2, 16, 32, 32),
    "block2": (2, 32, 16, 16),
    "block3": (2, 64, 8, 8),
    "block1.layer.0.conv2": (2, 16, 32, 32),
    "block2.layer.1": (2, 32, 16, 16),
    "conv1": (2, 16, 32, 32),
}
PREACT_SHAPES = {
    "layer2": (2, 128, 16, 16),
    "layer3.1": (2, 256, 8, 8),
    "layer4.0.conv1": (2, 512, 4, 4),
    "layer1": (2, 64, 32, 32),
}


@pytest.mark.parametrize(
    ("arch", "shapes"),
    [("wrn16_1", WRN_SHAPES), ("preact_resnet18", PREACT_SHAPES)],
)
def test_feature_hooks_capture_nested_names(arch, shapes):
    model = create_model(arch, 10, 3).eval()
    names = list(shapes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), FeatureHooks(model, names) as hooks:
        for module in hooks.modules.values():
            assert len(module._forward_hooks) >= 1
        logits = model(x)
        outputs = hooks.take()
    assert logits.shape == (2, 10)
    assert [tuple(o.shape) for o in outputs] == [shapes[n] for n in names]
    _assert_hooks_removed(hooks)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_feature_hooks_capture_the_right_tensor():
    model = create_model("wrn16_1", 10, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), FeatureHooks(model, ["block2"]) as hooks:
        model(x)
        (captured,) = hooks.take()
    with torch.no_grad():
        expected = model.block2(model.block1(model.conv1(x)))
    torch.testing.assert_close(captured, expected)


def test_feature_hooks_on_a_plain_sequential():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 5),
    )
    with FeatureHooks(model, ["3", "0"]) as hooks:
        out = model(torch.randn(3, 3, 32, 32))
        relu, conv = hooks.take()
    assert out.shape == (3, 5)
    assert relu.shape == (3, 8, 16, 16)
    assert conv.shape == (3, 4, 32, 32)
    assert (relu >= 0).all()
    _assert_hooks_removed(hooks)
    assert layer_shapes(model, torch.randn(1, 3, 32, 32), ["2", "4"]) == {"2": (1, 8, 16, 16), "4": (1, 2048)}


class DDPLike(nn.Module):
    """Holds the real model as ``.module``, as DistributedDataParallel does."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.mark.parametrize("name", ["block2", "module.block2", "block1.layer.0.conv2"])
def test_feature_hooks_through_a_ddp_like_wrapper(name):
    inner = create_model("wrn16_1", 10, 3).eval()
    wrapped = DDPLike(inner)
    with torch.no_grad(), FeatureHooks(wrapped, [name]) as hooks:
        wrapped(torch.randn(2, 3, 32, 32))
        (out,) = hooks.take()
    assert out.shape[0] == 2 and out.ndim == 4
    expected_module = dict(inner.named_modules())[name.removeprefix("module.")]
    assert next(iter(hooks.modules.values())) is expected_module
    assert all(len(m._forward_hooks) == 0 for m in wrapped.modules())


def test_ddp_like_wrapper_typo_suggests_unprefixed_names():
    wrapped = DDPLike(create_model("wrn16_1", 10, 3))
    with pytest.raises(NadError, match="did you mean") as info:
        FeatureHooks(wrapped, ["blockk3"])
    assert "block3" in str(info.value)


def test_hooks_are_removed_when_the_forward_raises():
    model = create_model("small_cnn", 10, 3)
    with pytest.raises(RuntimeError), FeatureHooks(model, ["block1", "block2"]) as hooks:
        model(torch.randn(2, 5, 16, 16))  # wrong channel count
    _assert_hooks_removed(hooks)


def test_take_clears_and_reports_layers_not_run():
    model = create_model("small_cnn", 10, 3).eval()
    with torch.no_grad(), FeatureHooks(model, ["block1"]) as hooks:
        model(torch.randn(2, 3, 16, 16))
        assert len(hooks.take()) == 1
        with pytest.raises(NadError, match="'block1'"):
            hooks.take()  # the record was cleared and nothing ran since


def test_hooks_do_not_record_outside_the_with_block():
    model = create_model("small_cnn", 10, 3).eval()
    hooks = FeatureHooks(model, ["block1"])
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert hooks.outputs == {}


def test_hook_on_a_module_that_outputs_a_tuple_is_refused():
    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = TupleOut()

        def forward(self, x):
            return self.pair(x)[0]

    net = Net()
    with pytest.raises(NadError, match="does not output a tensor"), FeatureHooks(net, ["pair"]):
        net(torch.zeros(1))


# -- automatic layer choice -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("wrn16_1", ["block1", "block2", "block3"]), ("preact_resnet18", ["layer2", "layer3", "layer4"])],
)
def test_auto_layers(arch, expected):
    model = create_model(arch, 10, 3).train()
    assert auto_layers(model, torch.randn(2, 3, 32, 32)) == expected
    assert model.training
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_auto_layers_small_cnn_and_count():
    model = create_model("small_cnn", 10, 1)
    assert auto_layers(model, torch.randn(2, 1, 16, 16)) == ["block1", "block2", "block3"]
    assert auto_layers(model, torch.randn(2, 1, 16, 16), count=2) == ["block2", "block3"]


def test_auto_layers_on_a_sequential_skips_1x1_maps():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    assert auto_layers(model, torch.randn(2, 3, 8, 8)) == ["0", "1"]


def test_auto_layers_without_convolutions_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(NadError, match="--layers"):
        auto_layers(model, torch.randn(2, 3, 2, 2))
