"""Property-based and fuzz tests (hypothesis): spec parsing, data readers, checkpoint loading, BadNets.

The contract under test everywhere: bad input raises ``NadError`` (one line for the CLI), never another
exception type. Bugs the fuzzing found have repro tests at the end of each section.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from helpers import cifar_arrays
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nad.attacks import Attack, BadNets, parse_attack
from nad.data import ImageData
from nad.data.sources import DATA_KINDS, SPLITS, _read_cifar_batch, load_npz, parse_data_spec
from nad.errors import NadError
from nad.models import build_classifier, load_model, save_model
from nad.models.checkpoint import ModelInfo
from nad.spec import split_spec

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------------------------
# 1. spec parser
# ---------------------------------------------------------------------------------------------------------
SPEC_ALPHABET = st.sampled_from(
    list("badnets:target=,rate0123456789.-_ eE;:grid square xy value mode seed all2one\x00é")
)


@FAST
@given(st.one_of(st.text(), st.text(SPEC_ALPHABET), st.builds(lambda s: "badnets:" + s, st.text(SPEC_ALPHABET))))
@example("badnets:target=1e400")
@example("badnets:rate=nan")
@example("badnets:rate=inf,target=-1")
@example("badnets:x=none,y=null,size=")
@example(":")
@example("badnets:=5")
def test_parse_attack_returns_attack_or_nad_error(text):
    try:
        attack = parse_attack(text)
    except NadError:
        return
    assert isinstance(attack, Attack)
    assert 0 < attack.rate <= 1
    assert attack.target >= 0


@FAST
@given(st.text())
def test_split_spec_returns_name_and_params_or_nad_error(text):
    try:
        name, params = split_spec(text)
    except NadError:
        return
    assert name and name == name.strip().lower()
    assert all(isinstance(k, str) and k == k.strip() and k for k in params)


valid_rates = st.floats(min_value=0, max_value=1, exclude_min=True, allow_nan=False)


@st.composite
def badnets_specs(draw):
    params = {"target": draw(st.integers(0, 9)), "rate": draw(valid_rates)}
    if draw(st.booleans()):
        params["mode"] = draw(st.sampled_from(["all2one", "all2all"]))
    if draw(st.booleans()):
        params["seed"] = draw(st.integers(0, 2**31))
    if draw(st.booleans()):
        params["pattern"] = "square"
        params["size"] = draw(st.integers(1, 8))
        params["value"] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        params["x"] = draw(st.integers(0, 20))
    if draw(st.booleans()):
        params["y"] = draw(st.integers(0, 20))
    items = list(params.items())
    order = draw(st.permutations(items))
    spaced = draw(st.booleans())
    sep = " , " if spaced else ","
    name = draw(st.sampled_from(["badnets", "BadNets", " badnets "]))
    return name + ":" + sep.join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in order), params


@FAST
@given(badnets_specs())
def test_valid_badnets_specs_parse_exactly_and_round_trip(case):
    spec, params = case
    attack = parse_attack(spec)
    assert isinstance(attack, BadNets)
    for key, value in params.items():
        assert getattr(attack, key) == value, key
    assert attack.target == params["target"] and attack.rate == params["rate"]
    again = parse_attack(attack.spec())
    assert again == attack
    assert again.spec() == attack.spec()


# ---------------------------------------------------------------------------------------------------------
# 2. data readers
# ---------------------------------------------------------------------------------------------------------
@st.composite
def npz_contents(draw):
    arrays = {}
    dtypes = st.sampled_from([np.uint8, np.float32, np.int64])
    if draw(st.integers(0, 9)) > 0:
        rank = draw(st.integers(1, 5))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank)))
        dtype = draw(dtypes)
        arrays["x"] = np.asarray(draw(st.integers(0, 255)) + np.zeros(shape), dtype=dtype)
        n = shape[0]
    else:
        n = draw(st.integers(0, 4))
    if draw(st.integers(0, 9)) > 0:
        ylen = n if draw(st.booleans()) else draw(st.integers(0, 6))
        yrank = 1 if draw(st.integers(0, 4)) else 2
        yshape = (ylen,) if yrank == 1 else (ylen, 1)
        dtype = draw(dtypes)
        values = draw(st.lists(st.integers(-2, 12), min_size=ylen, max_size=ylen))
        arrays["y"] = (
            np.asarray(values, dtype=dtype).reshape(yshape)
            if dtype != np.uint8
            else np.abs(np.asarray(values)).astype(np.uint8).reshape(yshape)
        )
    if draw(st.booleans()):
        # a scalar class count, sometimes too small for the labels (ImageData refuses that)
        arrays["num_classes"] = np.asarray(draw(st.integers(0, 20)), dtype=draw(dtypes))
    if draw(st.booleans()):
        arrays["extra"] = np.zeros(2)
    return arrays


@SLOW
@given(npz_contents())
def test_load_npz_loads_or_raises_nad_error(tmp_path, arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    try:
        data = load_npz(path)
    except NadError:
        return
    assert data.x.dtype == torch.uint8 and data.x.ndim == 4
    assert len(data.y) == data.x.shape[0] == arrays["x"].shape[0]
    assert data.y.dtype == torch.int64
    # channels-last in the file, channels-first in memory
    x = arrays["x"] if arrays["x"].ndim == 4 else arrays["x"][..., None]
    assert torch.equal(data.x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))


@SLOW
@given(st.binary(max_size=600))
@example(b"PK\x03\x04")
@example(b"")
def test_load_npz_on_random_bytes_raises_nad_error(tmp_path, raw):
    path = tmp_path / "junk.npz"
    path.write_bytes(raw)
    with pytest.raises(NadError):
        load_npz(path)


def test_load_npz_non_scalar_num_classes_raises_nad_error(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]), num_classes=np.array([2, 3]))
    with pytest.raises(NadError):
        load_npz(path)


def _check_cifar_result(result):
    x, y = result
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (3, 32, 32)
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert len(y) == 0 or (y.min() >= 0 and y.max() <= 9)


@FAST
@given(st.binary(max_size=300))
@example(pickle.dumps([1, 2]))
@example(pickle.dumps({b"data": b"x"}))
@example(b"\x80\x05")
def test_read_cifar_batch_on_random_bytes(raw):
    try:
        result = _read_cifar_batch(raw, "x")
    except NadError:
        return
    _check_cifar_result(result)


_DATA, _LABELS = cifar_arrays(3, seed=1)
VALID_BATCHES = [
    pickle.dumps({b"batch_label": b"b", b"labels": _LABELS, b"data": _DATA, b"filenames": [b"a.png"] * 3}, protocol=p)
    for p in (2, 4, 5)
]


@st.composite
def mutated_batches(draw):
    raw = bytearray(draw(st.sampled_from(VALID_BATCHES)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return bytes(raw)


@FAST
@given(mutated_batches())
def test_read_cifar_batch_on_mutated_pickles(raw):
    try:
        result = _read_cifar_batch(raw, "x")
    except NadError:
        return
    _check_cifar_result(result)


def test_read_cifar_batch_valid_pickles_load():
    for raw in VALID_BATCHES:
        x, y = _read_cifar_batch(raw, "x")
        assert np.array_equal(x.reshape(3, -1), _DATA) and y.tolist() == _LABELS


def test_read_cifar_batch_non_utf8_key():
    # An extra key that is not UTF-8 is harmless: the batch still loads.
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"\xff": 1})
    x, y = _read_cifar_batch(raw, "x")
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [0]


def test_read_cifar_batch_string_labels():
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["a"]})
    with pytest.raises(NadError):
        _read_cifar_batch(raw, "x")


def test_read_cifar_batch_huge_labels():
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]})
    with pytest.raises(NadError):
        _read_cifar_batch(raw, "x")


# Short components here; the >255-byte case (ENAMETOOLONG from Path.exists) has its own test below.
@FAST
@given(st.one_of(st.text(max_size=60), st.builds("{}:{}".format, st.sampled_from(DATA_KINDS), st.text(max_size=60))))
@example("digits:bogus")
@example("npz:")
@example("cifar10:/nonexistent:test")
@example("x\x00y")
@example(".")
def test_parse_data_spec_returns_kind_or_nad_error(text):
    try:
        kind, location, split = parse_data_spec(text)
    except NadError:
        return
    assert kind in DATA_KINDS
    assert split in SPLITS
    assert isinstance(location, str)


def test_parse_data_spec_long_name():
    with pytest.raises(NadError):
        parse_data_spec("a" * 300)


# ---------------------------------------------------------------------------------------------------------
# 3. checkpoint loader fuzz
# ---------------------------------------------------------------------------------------------------------
def _small_cnn():
    torch.manual_seed(0)
    return build_classifier(ModelInfo("small_cnn", 10, (3, 32, 32)))


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    clf = _small_cnn()
    st_path = save_model(clf, root, stem="valid")
    (root / "valid.json").unlink()  # load by --arch, as a foreign file would be
    pth = root / "valid.pth"
    torch.save(clf.module.state_dict(), pth)
    return {".safetensors": st_path.read_bytes(), ".pth": pth.read_bytes()}


def _load_or_nad_error(path):
    try:
        clf = load_model(path, arch="small_cnn")
    except NadError:
        return None
    assert clf.info.arch == "small_cnn"
    return clf


_counter = iter(range(10**9))


def _write(tmp_path, raw, suffix):
    path = tmp_path / f"f{next(_counter)}{suffix}"
    path.write_bytes(raw)
    return path


@SLOW
@given(st.binary(max_size=400), st.sampled_from([".pth", ".safetensors"]))
@example(b"", ".safetensors")
@example(b"", ".pth")
@example(struct.pack("<Q", 2**63) + b"{}", ".safetensors")
@example(struct.pack("<Q", 2) + b"{}", ".safetensors")
@example(b"PK\x05\x06" + b"\x00" * 18, ".pth")
def test_load_model_random_bytes(tmp_path, raw, suffix):
    assert _load_or_nad_error(_write(tmp_path, raw, suffix)) is None


@st.composite
def mutations(draw):
    suffix = draw(st.sampled_from([".pth", ".safetensors"]))
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(1, 255)),
                st.tuples(st.just("truncate"), st.integers(0, 10**7), st.just(0)),
                st.tuples(st.just("header"), st.integers(0, 2**64 - 1), st.just(0)),
                st.tuples(st.just("flip_head"), st.integers(0, 400), st.integers(1, 255)),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return suffix, ops


def _mutate(raw, ops):
    raw = bytearray(raw)
    for op, a, b in ops:
        if not raw:
            break
        if op == "flip":
            raw[a % len(raw)] ^= b
        elif op == "flip_head":
            raw[min(a, len(raw) - 1)] ^= b
        elif op == "truncate":
            raw = raw[: a % len(raw)]
        elif op == "header" and len(raw) >= 8:
            raw[:8] = struct.pack("<Q", a)
    return bytes(raw)


@SLOW
@given(mutations())
def test_load_model_mutated_files(tmp_path, valid_files, case):
    suffix, ops = case
    _load_or_nad_error(_write(tmp_path, _mutate(valid_files[suffix], ops), suffix))


def test_load_model_valid_files_load(tmp_path, valid_files):
    ref = _small_cnn().module.state_dict()
    for suffix, raw in valid_files.items():
        clf = load_model(_write(tmp_path, raw, suffix), arch="small_cnn")
        for k, v in clf.module.state_dict().items():
            assert torch.equal(v, ref[k]), (suffix, k)


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 10**12, 2**32])
def test_safetensors_huge_header_length(tmp_path, valid_files, length):
    raw = struct.pack("<Q", length) + valid_files[".safetensors"][8:]
    with pytest.raises(NadError):
        load_model(_write(tmp_path, raw, ".safetensors"), arch="small_cnn")


def test_safetensors_tensor_larger_than_file(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    raw = struct.pack("<Q", len(header)) + header + b"\x00" * 16
    with pytest.raises(NadError):
        load_model(_write(tmp_path, raw, ".safetensors"), arch="small_cnn")


def test_safetensors_offsets_beyond_file(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    raw = struct.pack("<Q", len(header)) + header + b"\x00" * 4
    with pytest.raises(NadError):
        load_model(_write(tmp_path, raw, ".safetensors"), arch="small_cnn")


@SLOW
@given(
    st.lists(
        st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20), st.binary()),
        max_size=4,
        unique_by=lambda m: m[0],
    )
)
@example([("archive/data.pkl", b"\x80\x02}q\x00.")])
@example([("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2)), ("archive/version", b"3\n")])
@example([("data.pkl", b"junk"), ("x/y/z", b"")])
def test_pth_zip_with_wrong_layout(tmp_path, members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    with pytest.raises(NadError):
        load_model(_write(tmp_path, buf.getvalue(), ".pth"), arch="small_cnn")


def test_pth_zip_arbitrary_members(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "hi")
        zf.writestr("weights/model.bin", b"\x00" * 64)
    with pytest.raises(NadError):
        load_model(_write(tmp_path, buf.getvalue(), ".pth"), arch="small_cnn")


# ---------------------------------------------------------------------------------------------------------
# 4. attack application
# ---------------------------------------------------------------------------------------------------------
@st.composite
def uint8_batches(draw):
    n, c, hw = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3])), draw(st.integers(8, 32))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, hw, hw), dtype=torch.uint8, generator=gen)


@FAST
@given(uint8_batches())
def test_badnets_apply_changes_only_bottom_right_corner(x):
    before = x.clone()
    out = BadNets().apply(x)
    assert torch.equal(x, before)  # the input is not modified in place
    assert out.dtype == torch.uint8 and out.shape == x.shape
    h = x.shape[2]
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :, h - 3 :, h - 3 :] = True
    assert torch.equal(out[~mask], x[~mask])
    grid = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(out[:, :, h - 3 :, h - 3 :], grid.expand(x.shape[0], x.shape[1], 3, 3))


@st.composite
def poison_cases(draw):
    k = draw(st.integers(1, 10))
    n = draw(st.integers(1, 40))
    c, hw = draw(st.sampled_from([1, 3])), draw(st.integers(3, 12))
    y = torch.tensor(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=torch.int64)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    x = torch.randint(0, 256, (n, c, hw, hw), dtype=torch.uint8, generator=gen)
    attack = BadNets(target=draw(st.integers(0, k - 1)), rate=draw(valid_rates), seed=draw(st.integers(0, 2**31)))
    return ImageData(x, y, k), attack


@FAST
@given(poison_cases())
def test_poison_count_and_effect(case):
    data, attack = case
    non_target = int((data.y != attack.target).sum())
    expected = min(non_target, round(attack.rate * len(data)))
    result = attack.poison(data)
    idx = result.indices
    assert len(idx) == expected
    assert len(torch.unique(idx)) == len(idx)
    assert bool((data.y[idx] != attack.target).all())
    assert bool((result.data.y[idx] == attack.target).all())
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(result.data.y[rest], data.y[rest])
    assert torch.equal(result.data.x[rest], data.x[rest])
    assert torch.equal(result.data.x[idx], attack.apply(data.x[idx]))
    assert result.data.x.shape == data.x.shape and result.data.x.dtype == torch.uint8
    # deterministic for a given seed
    assert torch.equal(attack.poison(data).indices, idx)
