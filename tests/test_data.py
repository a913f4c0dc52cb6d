"""Dataset readers (CIFAR-10 batches and tarball, npz, image folders, digits), splits and data specs."""

from __future__ import annotations

import pickle
import sys
import tarfile

import numpy as np
import pytest
import torch
from helpers import Evil, cifar_arrays, write_cifar
from PIL import Image

from nad.data import ImageData, load_data, parse_data_spec, stratified_split
from nad.data.sources import CIFAR10_CLASSES, default_test_spec, load_cifar10, load_digits, load_folder, load_npz
from nad.errors import NadError

# -- CIFAR-10 ---------------------------------------------------------------------------------------


def expected_cifar(written, names):
    x = np.concatenate([written[n][0] for n in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(written[n][1]) for n in names])
    return torch.from_numpy(x), torch.from_numpy(y)


TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_cifar_folder(tmp_path, protocol):
    written = write_cifar(tmp_path, n=6, protocol=protocol)
    train = load_cifar10(tmp_path, "train")
    test = load_cifar10(tmp_path, "test")
    x, y = expected_cifar(written, TRAIN)
    assert train.x.dtype == torch.uint8 and train.x.shape == (30, 3, 32, 32)
    assert torch.equal(train.x, x) and torch.equal(train.y, y)
    assert train.y.dtype == torch.int64
    assert train.num_classes == 10 and train.classes == CIFAR10_CLASSES
    x, y = expected_cifar(written, ["test_batch"])
    assert torch.equal(test.x, x) and torch.equal(test.y, y)
    # Row-major CHW layout: the first 1024 bytes are the red channel.
    assert torch.equal(test.x[0, 0].flatten(), torch.from_numpy(written["test_batch"][0][0, :1024]))


def test_cifar_folder_pickle_protocol_5(tmp_path):
    written = write_cifar(tmp_path, n=4, protocol=5)
    x, _ = expected_cifar(written, ["test_batch"])
    assert torch.equal(load_cifar10(tmp_path, "test").x, x)


def test_cifar_folder_given_directly(tmp_path):
    written = write_cifar(tmp_path, n=3)
    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test")
    assert torch.equal(test.x, expected_cifar(written, ["test_batch"])[0])


def test_cifar_tarball(tmp_path):
    src = tmp_path / "src"
    written = write_cifar(src, n=5)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train = load_data(f"cifar10:{root}")
    test = load_data(f"cifar10:{root}:test")
    assert torch.equal(train.x, expected_cifar(written, TRAIN)[0])
    assert torch.equal(test.y, expected_cifar(written, ["test_batch"])[1])
    # The tarball itself can be named too, and a bare root is recognised.
    assert torch.equal(load_cifar10(root / "cifar-10-python.tar.gz", "test").x, test.x)
    assert parse_data_spec(str(root)) == ("cifar10", str(root), "train")


def test_cifar_tarball_missing_member(tmp_path):
    src = tmp_path / "src"
    write_cifar(src, n=2)
    (src / "cifar-10-batches-py" / "data_batch_4").unlink()
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (tmp_path / "src").rename(tmp_path / "elsewhere")
    with pytest.raises(NadError, match="data_batch_4"):
        load_cifar10(tmp_path, "train")
    assert len(load_cifar10(tmp_path, "test")) == 2


def test_cifar_missing_batch_file(tmp_path):
    write_cifar(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").unlink()
    with pytest.raises(NadError, match="data_batch_2"):
        load_cifar10(tmp_path, "train")


def test_cifar_nothing_there(tmp_path):
    with pytest.raises(NadError, match="no CIFAR-10 here"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(NadError, match="no such file"):
        load_cifar10(tmp_path / "absent", "train")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_cifar_truncated_batch(tmp_path, keep):
    write_cifar(tmp_path, n=4)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = batch.read_bytes()
    batch.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(NadError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")


@pytest.mark.parametrize(
    "batch",
    [
        {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
        {b"labels": [0, 1]},
        [1, 2, 3],
    ],
)
def test_cifar_malformed_batch(tmp_path, batch):
    write_cifar(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(NadError, match="test_batch"):
        load_cifar10(tmp_path, "test")


def test_cifar_random_bytes(tmp_path):
    write_cifar(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(NadError, match="test_batch"):
        load_cifar10(tmp_path, "test")


def test_cifar_batch_with_malicious_global_is_refused(tmp_path):
    write_cifar(tmp_path, n=2)
    marker = tmp_path / "MARKER"
    data, labels = cifar_arrays(2, seed=0)
    evil = {b"data": data, b"labels": labels, b"extra": Evil(marker)}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(NadError, match=r"refusing to load (posix|os|nt)\.system"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()


def test_cifar_batch_importing_a_module_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "IMPORTED"
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "nad_cifar_sideeffect.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    import nad_cifar_sideeffect  # creates the marker once

    write_cifar(tmp_path, n=2)
    data, labels = cifar_arrays(2, seed=0)
    payload = pickle.dumps({b"data": data, b"labels": labels, b"x": nad_cifar_sideeffect.Thing()}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    del sys.modules["nad_cifar_sideeffect"]
    marker.unlink()
    with pytest.raises(NadError, match="nad_cifar_sideeffect"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()
    assert "nad_cifar_sideeffect" not in sys.modules


# -- npz --------------------------------------------------------------------------------------------


def test_npz_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(7, 5, 6, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 4], dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_npz(tmp_path / "d.npz")
    assert data.x.shape == (7, 3, 5, 6) and data.x.dtype == torch.uint8
    assert torch.equal(data.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert data.y.dtype == torch.int64 and data.y.tolist() == y.tolist()
    assert data.num_classes == 5
    assert data.name == "d"
    assert torch.equal(load_data(f"npz:{tmp_path / 'd.npz'}").x, data.x)
    assert torch.equal(load_data(str(tmp_path / "d.npz")).x, data.x)  # recognised by suffix


def test_npz_grayscale_and_num_classes(tmp_path):
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez_compressed(tmp_path / "g.npz", x=x, y=np.array([1, 0]), num_classes=np.array(12))
    data = load_npz(tmp_path / "g.npz")
    assert data.x.shape == (2, 1, 4, 4)
    assert torch.equal(data.x[:, 0], torch.from_numpy(x))
    assert data.num_classes == 12


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 1])}, "expected arrays 'x' and 'y'"),
        ({"x": np.zeros((2, 4, 4), np.float32), "y": np.array([0, 1])}, "'x' must be uint8"),
        ({"x": np.zeros((2, 16), np.uint8), "y": np.array([0, 1])}, "'x' must be uint8"),
        ({"x": np.zeros((2, 4, 4, 3, 1), np.uint8), "y": np.array([0, 1])}, "'x' must be uint8"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.0, 1.0])}, "'y' must be 2 integers"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([[0], [1]])}, "'y' must be 2 integers"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1, 2])}, "'y' must be 2 integers"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, -1])}, "non-negative"),
    ],
)
def test_npz_refusals(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(NadError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_npz_with_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(NadError, match=r"obj\.npz"):
        load_npz(tmp_path / "obj.npz")


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip archive")
    with pytest.raises(NadError, match=r"junk\.npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(NadError, match="no such file"):
        load_npz(tmp_path / "absent.npz")


def test_npz_labels_beyond_num_classes(tmp_path):
    np.savez(tmp_path / "k.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 5]), num_classes=np.array(3))
    with pytest.raises(NadError, match="labels must lie in"):
        load_npz(tmp_path / "k.npz")


# -- image folders ----------------------------------------------------------------------------------


def write_folder(root, per_class=3, size=(8, 6)):
    rng = np.random.default_rng(1)
    arrays = {}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
            arrays[(cls, i)] = arr
    return arrays


def test_folder_loader(tmp_path):
    arrays = write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("ignored: not an image suffix")
    data = load_folder(tmp_path / "imgs")
    assert data.classes == ("cat", "dog") and data.num_classes == 2
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.x.shape == (6, 3, 6, 8)
    assert torch.equal(data.x[4], torch.from_numpy(arrays[("dog", 1)]).permute(2, 0, 1))
    assert torch.equal(load_data(str(tmp_path / "imgs")).x, data.x)  # a bare folder is recognised
    assert torch.equal(load_data(f"folder:{tmp_path / 'imgs'}").x, data.x)


def test_folder_converts_and_resizes(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, per_class=1, size=(8, 6))
    Image.fromarray(np.full((12, 16), 200, np.uint8), mode="L").save(root / "dog" / "zz_gray.png")
    data = load_folder(root)
    assert data.x.shape == (3, 3, 6, 8)
    assert (data.x[2] == 200).all()


def test_folder_unreadable_image_is_named(tmp_path):
    write_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(NadError, match=r"broken\.png"):
        load_folder(tmp_path / "imgs")


def test_folder_refusals(tmp_path):
    with pytest.raises(NadError, match="no such directory"):
        load_folder(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    with pytest.raises(NadError, match="sub-folder"):
        load_folder(tmp_path / "flat")
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(NadError, match="no images"):
        load_folder(tmp_path / "flat")


# -- digits -----------------------------------------------------------------------------------------


def test_digits_split_sizes():
    # 20% of each class, rounded per class, sums to 359 test images.
    assert (len(load_digits("train")), len(load_digits("test"))) == (1438, 359)


def test_digits():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797
    assert abs(len(test) - 360) <= 1
    assert train.image_shape == (1, 16, 16) and test.image_shape == (1, 16, 16)
    assert train.num_classes == 10 and train.x.dtype == torch.uint8
    assert set(train.y.tolist()) == set(range(10)) == set(test.y.tolist())
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    # Nearest upscaling: every 2x2 block holds one value.
    assert torch.equal(train.x[:, :, ::2, ::2], train.x[:, :, 1::2, 1::2])
    # Stratified: every class has about 20% of its images in the test split.
    share = test.class_counts().float() / (test.class_counts() + train.class_counts()).float()
    assert ((share - 0.2).abs() < 0.01).all()
    assert torch.equal(load_digits("train").x, train.x)  # deterministic
    assert torch.equal(load_data("digits:test").y, test.y)


# -- stratified split -------------------------------------------------------------------------------


def test_stratified_split():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 10 + [3] * 3)
    chosen, rest = stratified_split(y, 0.2, seed=5)
    again, _ = stratified_split(y, 0.2, seed=5)
    other, _ = stratified_split(y, 0.2, seed=6)
    assert torch.equal(chosen, again)
    assert not torch.equal(chosen, other)
    assert torch.bincount(y[chosen], minlength=4).tolist() == [10, 6, 2, 1]  # round(0.2 * n), at least one
    assert len(set(chosen.tolist()) & set(rest.tolist())) == 0
    assert sorted(chosen.tolist() + rest.tolist()) == list(range(len(y)))
    assert torch.equal(chosen, torch.sort(chosen).values) and torch.equal(rest, torch.sort(rest).values)


def test_stratified_split_ratio_bounds():
    y = torch.arange(20) % 4
    chosen, rest = stratified_split(y, 1.0, seed=0)
    assert chosen.tolist() == list(range(20)) and len(rest) == 0
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(NadError, match="ratio"):
            stratified_split(y, bad, seed=0)


# -- ImageData and specs ----------------------------------------------------------------------------


def test_image_data_validation():
    with pytest.raises(NadError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(NadError, match="labels of shape"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(NadError, match="labels must lie"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), 2)
    data = ImageData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1]), 3)
    assert data.class_counts().tolist() == [1, 2, 0]
    assert len(data.subset(torch.tensor([2]))) == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cifar10:/x:test", ("cifar10", "/x", "test")),
        ("cifar10:/x:train", ("cifar10", "/x", "train")),
        ("cifar10:/x", ("cifar10", "/x", "train")),
        ("digits:test", ("digits", "", "test")),
        ("digits", ("digits", "", "train")),
        ("npz:/a.npz", ("npz", "/a.npz", "train")),
        ("folder:/imgs:test", ("folder", "/imgs", "test")),
        ("cifar10:C:/data", ("cifar10", "C:/data", "train")),
    ],
)
def test_parse_data_spec(spec, expected):
    assert parse_data_spec(spec) == expected


def test_parse_data_spec_default_split_and_errors(tmp_path):
    assert parse_data_spec("digits", default_split="test") == ("digits", "", "test")
    assert parse_data_spec("cifar10:/x", default_split="test") == ("cifar10", "/x", "test")
    with pytest.raises(NadError, match="split must be train or test"):
        parse_data_spec("digits:val")
    with pytest.raises(NadError, match="no such file or directory"):
        parse_data_spec(str(tmp_path / "absent"))
    write_cifar(tmp_path / "c", n=1)
    assert parse_data_spec(f"{tmp_path / 'c'}:test") == ("cifar10", str(tmp_path / "c"), "test")
    assert parse_data_spec(str(tmp_path / "c" / "cifar-10-batches-py"))[0] == "cifar10"
    assert default_test_spec("digits", None) == "digits:test" and default_test_spec(
        f"cifar10:{tmp_path}", None
    ).endswith(":test")
    assert (
        default_test_spec("npz:/a.npz", None) is None
        and default_test_spec("npz:/a.npz", "digits:test") == "digits:test"
    )
