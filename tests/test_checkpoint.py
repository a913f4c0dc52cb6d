"""Saving and loading classifiers: round trips, foreign state_dicts, and refusing files that would run code."""

from __future__ import annotations

import json
import os
import pickle
import sys

import pytest
import torch
from helpers import Evil

from nad.errors import NadError
from nad.models import (
    Classifier,
    ModelInfo,
    Normalization,
    build_classifier,
    create_model,
    load_model,
    parse_normalize,
    save_model,
)


def trained_like_classifier(arch: str = "small_cnn", channels: int = 1, size: int = 16) -> Classifier:
    """A classifier whose BatchNorm statistics are not the defaults, so buffers matter in a round trip."""
    info = ModelInfo(arch, 10, (channels, size, size), {}, Normalization((0.5,) * channels, (0.25,) * channels))
    clf = build_classifier(info)
    clf.module.train()
    with torch.no_grad():
        for _ in range(3):
            clf.module(torch.randn(8, channels, size, size))
    return clf.to("cpu")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Equal values under equal names; the layouts may differ (nad builds modules channels-last)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def outputs(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(x)


def test_save_load_round_trip(tmp_path):
    clf = trained_like_classifier()
    clf = Classifier(clf.module, ModelInfo(**{**vars(clf.info), "attack": "badnets:target=3"}))
    weights = save_model(clf, tmp_path)
    assert weights == tmp_path / "model.safetensors"
    assert (tmp_path / "model.json").is_file()
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["format"] == "nad-model/1" and sidecar["arch"] == "small_cnn"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    for source in (tmp_path, weights):
        loaded = load_model(source)
        assert loaded.info == clf.info
        x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
        assert torch.equal(outputs(loaded.module, loaded.preprocess(x)), outputs(clf.module, clf.preprocess(x)))
        for (k, a), (k2, b) in zip(clf.module.state_dict().items(), loaded.module.state_dict().items()):
            assert k == k2 and torch.equal(a, b)


def test_save_with_stem_and_overrides(tmp_path):
    clf = trained_like_classifier()
    save_model(clf, tmp_path, stem="backdoored")
    assert (tmp_path / "backdoored.safetensors").is_file() and (tmp_path / "backdoored.json").is_file()
    loaded = load_model(tmp_path / "backdoored.safetensors", normalize="none")
    assert loaded.info.normalize is None
    assert loaded.info.arch == "small_cnn"


def foreign_state(arch: str = "small_cnn", channels: int = 3) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    module = create_model(arch, 10, channels)
    module.train()
    with torch.no_grad():
        module(torch.randn(4, channels, 32, 32))
    return module, {f"module.{k}": v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("key", ["state_dict", "model", "net", "model_state_dict", None])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".tar"])
def test_foreign_state_dict_loads_with_arch(tmp_path, key, suffix):
    module, state = foreign_state()
    payload = state if key is None else {key: state, "epoch": 7, "best_acc": 0.9}
    path = tmp_path / f"foreign{suffix}"
    torch.save(payload, path)
    loaded = load_model(path, arch="small_cnn")
    assert loaded.info.arch == "small_cnn"
    assert loaded.info.num_classes == 10
    assert loaded.info.input_size[0] == 3
    assert same_weights(loaded.module, module)


def test_foreign_state_dict_nested_twice(tmp_path):
    module, state = foreign_state()
    torch.save({"model": {"state_dict": state}}, tmp_path / "nested.pth")
    loaded = load_model(tmp_path / "nested.pth", arch="small_cnn")
    assert same_weights(loaded.module, module)


def test_foreign_wrn_loads(tmp_path):
    module, state = foreign_state("wrn16_1")
    torch.save({"state_dict": state}, tmp_path / "wrn.pth")
    loaded = load_model(tmp_path / "wrn.pth", arch="wrn16_1", normalize="cifar10")
    assert loaded.info.normalize == parse_normalize("cifar10")
    assert same_weights(loaded.module, module)


def test_foreign_file_without_arch_asks_for_it(tmp_path):
    _, state = foreign_state()
    torch.save(state, tmp_path / "foreign.pth")
    with pytest.raises(NadError, match="--arch"):
        load_model(tmp_path / "foreign.pth")


def test_mismatched_keys_are_listed(tmp_path):
    _, state = foreign_state("small_cnn")
    torch.save(state, tmp_path / "small.pth")
    with pytest.raises(NadError) as info:
        load_model(tmp_path / "small.pth", arch="wrn16_1")
    message = str(info.value)
    assert "missing" in message and "unexpected" in message
    wrn_keys = set(create_model("wrn16_1", 10, 3).state_dict())
    small_keys = {k.removeprefix("module.") for k in state}
    assert sorted(wrn_keys - small_keys)[0] in message
    assert sorted(small_keys - wrn_keys)[0] in message
    assert "more" in message  # long lists are cut short


def test_missing_and_extra_single_key(tmp_path):
    _, state = foreign_state()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(NadError, match=r"missing fc\.bias; unexpected extra\.weight"):
        load_model(tmp_path / "odd.pth", arch="small_cnn")


def test_wrong_class_count_names_the_tensor(tmp_path):
    _, state = foreign_state()
    torch.save(state, tmp_path / "foreign.pth")
    with pytest.raises(NadError, match=r"fc\.weight: file \(10, 64\) vs model \(43, 64\)"):
        load_model(tmp_path / "foreign.pth", arch="small_cnn", num_classes=43)


def test_wrong_class_count_hints_num_classes(tmp_path):
    _, state = foreign_state()
    torch.save(state, tmp_path / "foreign.pth")
    with pytest.raises(NadError, match="num-classes"):
        load_model(tmp_path / "foreign.pth", arch="small_cnn", num_classes=43)


def test_no_state_dict_in_file(tmp_path):
    torch.save({"epoch": 3, "names": ["a", "b"]}, tmp_path / "empty.pth")
    with pytest.raises(NadError, match="no state_dict"):
        load_model(tmp_path / "empty.pth", arch="small_cnn")


def test_missing_model_file(tmp_path):
    with pytest.raises(NadError, match="no such model file"):
        load_model(tmp_path / "nothing.safetensors")
    with pytest.raises(NadError, match="no such model file"):
        load_model(tmp_path)  # a folder without model.safetensors


# -- hostile files ----------------------------------------------------------------------------------


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    _, state = foreign_state()
    torch.save({"state_dict": state, "payload": Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(NadError, match="refused"):
        load_model(path, arch="small_cnn")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(NadError):
        load_model(path, arch="small_cnn")
    assert not marker.exists()
    # The same bytes do run the command when unpickled naively: the test's payload is live.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_pickle_that_imports_an_arbitrary_module_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "IMPORTED"
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "nad_test_sideeffect.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef innocent(*args):\n    return args\n"
    )
    monkeypatch.syspath_prepend(str(mod_dir))
    import nad_test_sideeffect  # creates the marker once

    path = tmp_path / "imports.pth"
    _, state = foreign_state()
    torch.save({"state_dict": state, "hook": nad_test_sideeffect.innocent}, path)
    del sys.modules["nad_test_sideeffect"]
    marker.unlink()
    with pytest.raises(NadError, match="refused"):
        load_model(path, arch="small_cnn")
    assert not marker.exists()
    assert "nad_test_sideeffect" not in sys.modules


def test_pickle_referencing_os_function_is_refused(tmp_path):
    path = tmp_path / "fn.pth"
    _, state = foreign_state()
    torch.save({"state_dict": state, "fn": os.getcwd}, path)
    with pytest.raises(NadError, match="refused"):
        load_model(path, arch="small_cnn")


def test_truncated_safetensors_is_refused(tmp_path):
    save_model(trained_like_classifier(), tmp_path)
    weights = tmp_path / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NadError, match="safetensors"):
        load_model(tmp_path)
    weights.write_bytes(raw[:5])
    with pytest.raises(NadError, match="safetensors"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pth", "model.pt"])
def test_random_bytes_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NadError):
        load_model(path, arch="small_cnn")


def test_truncated_torch_zip_is_refused(tmp_path):
    _, state = foreign_state()
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NadError, match="refused"):
        load_model(path, arch="small_cnn")


def test_malformed_sidecar_is_refused(tmp_path):
    save_model(trained_like_classifier(), tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(NadError, match="JSON"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"arch": "small_cnn"}))
    with pytest.raises(NadError, match="sidecar"):
        load_model(tmp_path)


# -- normalisation ----------------------------------------------------------------------------------


def test_parse_normalize():
    assert parse_normalize(None) is None
    assert parse_normalize("none") is None
    assert parse_normalize("digits") == Normalization((0.5,), (0.5,))
    assert parse_normalize("0.1,0.2,0.3;0.5,0.5,0.5") == Normalization((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert parse_normalize("0.1/0.2") == Normalization((0.1,), (0.2,))
    for bad in ("abc", "0.1,0.2;0.5", "0.1;0", "1;2;3"):
        with pytest.raises(NadError, match="normalize"):
            parse_normalize(bad)


def test_preprocess_scales_and_normalises():
    clf = Classifier(torch.nn.Identity(), ModelInfo("x", 2, (1, 1, 2), normalize=Normalization((0.5,), (0.25,))))
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    torch.testing.assert_close(clf.preprocess(x), torch.tensor([[[[-2.0, 2.0]]]]))
    assert torch.equal(x, torch.tensor([[[[0, 255]]]], dtype=torch.uint8))


def test_unknown_architecture():
    with pytest.raises(NadError, match="did you mean wrn16_1"):
        create_model("wrn16-1", 10)


def test_user_architecture_from_a_file(tmp_path):
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\n"
        "class Net(nn.Sequential):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__(\n"
        "            nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)\n"
        "        )\n"
    )
    module = create_model(f"{tmp_path / 'mynet.py'}:Net", 7)
    assert module(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    with pytest.raises(NadError, match="ClassName"):
        create_model(str(tmp_path / "mynet.py"), 7)
    with pytest.raises(NadError, match="no such file"):
        create_model(f"{tmp_path / 'other.py'}:Net", 7)


def test_saved_files_get_the_usual_permissions(tmp_path) -> None:
    """safetensors recreates the file it writes; the model must still be readable like any other output."""

    import stat

    from nad.models import build_classifier

    clf = build_classifier(ModelInfo("small_cnn", 10, (3, 16, 16)))
    save_model(clf, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "model.json"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
