"""The ``name:key=value`` spec parser and typed YAML configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from nad.config import from_mapping, load_yaml, preset_names
from nad.data.augment import Augment
from nad.defenses import NADConfig
from nad.demo import DemoConfig
from nad.errors import NadError
from nad.spec import build, closest, describe, split_spec
from nad.training import OptimConfig, TrainConfig

# -- spec strings -----------------------------------------------------------------------------------


def test_split_spec():
    assert split_spec("badnets:target=5,size=4") == ("badnets", {"target": "5", "size": "4"})
    assert split_spec("  BadNets : target = 5 , , size=4 ") == ("badnets", {"target": "5", "size": "4"})
    assert split_spec("nad") == ("nad", {})
    assert split_spec("x:path=a=b") == ("x", {"path": "a=b"})


@pytest.mark.parametrize("spec", ["", ":target=1", "badnets:target", "badnets:=3"])
def test_split_spec_refusals(spec):
    with pytest.raises(NadError):
        split_spec(spec)


@dataclass(frozen=True)
class Params:
    count: int = 1
    scale: float = 1.0
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = ()
    maybe: int | None = None
    label: str = "x"


def test_build_converts_types():
    params = build(
        Params,
        {"count": "3", "scale": "0.5", "flag": "yes", "mode": "b", "sizes": "1;2 3", "maybe": "7", "label": "hi"},
        "test",
    )
    assert params == Params(3, 0.5, True, "b", (1, 2, 3), 7, "hi")
    assert build(Params, {"maybe": "none", "flag": "off"}, "test") == Params(maybe=None, flag=False)
    assert build(Params, {"count": 5}, "test").count == 5  # typed values pass through


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"cout": "3"}, "unknown parameter 'cout' \\(did you mean count\\?\\)"),
        ({"count": "three"}, "expected int"),
        ({"scale": "big"}, "expected float"),
        ({"flag": "maybe"}, "expected true or false"),
        ({"mode": "c"}, "expected one of a, b"),
    ],
)
def test_build_refusals(params, match):
    with pytest.raises(NadError, match=match):
        build(Params, params, "test")


def test_closest_and_describe():
    assert closest("targte", ["target", "seed"]) == " (did you mean target?)"
    assert closest("targte", ["rate", "target"]).startswith(" (did you mean target")  # best match first
    assert closest("zzz", ["target", "rate"]) == ""
    rows = {name: (kind, default) for name, kind, default in describe(Params)}
    assert rows["count"] == ("int", 1)
    assert rows["sizes"][1] == ()


# -- typed configuration ----------------------------------------------------------------------------


def test_from_mapping_nested():
    cfg = from_mapping(
        TrainConfig,
        {
            "epochs": 3,
            "optim": {"lr": 1, "milestones": [1, 2], "schedule": "cosine"},
            "augment": {"flip": False},
        },
    )
    assert cfg.epochs == 3
    assert isinstance(cfg.optim, OptimConfig) and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.milestones == (1, 2)
    assert cfg.optim.schedule == "cosine"
    assert cfg.augment == Augment(flip=False)
    assert cfg.batch_size == TrainConfig().batch_size  # untouched defaults


def test_from_mapping_scalar_to_tuple_and_passthrough():
    cfg = from_mapping(OptimConfig, {"milestones": 5})
    assert cfg.milestones == (5,)
    existing = OptimConfig(lr=0.3)
    assert from_mapping(OptimConfig, existing) is existing


def test_from_mapping_unknown_key_names_the_place():
    with pytest.raises(NadError, match=r"config\.train\.optim: unknown key 'lrr' \(did you mean lr\?\)"):
        from_mapping(NADConfig, {"train": {"optim": {"lrr": 0.1}}})
    with pytest.raises(NadError, match="unknown key 'epoch'"):
        from_mapping(TrainConfig, {"epoch": 3})


def test_from_mapping_refusals():
    with pytest.raises(NadError, match="expected a mapping for OptimConfig"):
        from_mapping(TrainConfig, {"optim": [1, 2]})
    with pytest.raises(NadError, match="epochs must be >= 0"):
        from_mapping(TrainConfig, {"epochs": -1})
    with pytest.raises(NadError, match="one beta per layer"):
        from_mapping(NADConfig, {"layers": ["a", "b"], "betas": [1.0]})


def test_demo_preset():
    cfg = from_mapping(DemoConfig, load_yaml("demo"), "demo preset")
    assert isinstance(cfg, DemoConfig)
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.train.optim, OptimConfig)
    assert isinstance(cfg.train.augment, Augment)
    assert isinstance(cfg.nad, NADConfig) and isinstance(cfg.nad.train, TrainConfig)
    assert cfg.data == "digits" and cfg.arch == "small_cnn"
    assert cfg.attack.startswith("badnets")
    assert cfg.train.augment.flip is False  # digits are not mirror-symmetric
    assert 0 < cfg.clean_ratio <= 1
    assert isinstance(cfg.train.optim.weight_decay, float)


def test_nad_paper_preset():
    cfg = from_mapping(NADConfig, load_yaml("nad-paper"), "nad-paper preset")
    assert isinstance(cfg, NADConfig)
    assert cfg.layers == () and cfg.betas == ()
    assert cfg.teacher_epochs == 10 and cfg.p == 2.0 and cfg.reduce == "sum"
    assert cfg.train.epochs == 20 and cfg.train.batch_size == 64
    assert cfg.train.optim == OptimConfig()  # the reference code's optimiser is the default one
    assert cfg.train.augment == Augment()


def test_preset_names():
    assert {"demo", "nad-paper"} <= set(preset_names())


def test_load_yaml_from_path_and_errors(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("teacher_epochs: 2\ntrain: {epochs: 1}\n")
    assert from_mapping(NADConfig, load_yaml(path)).train.epochs == 1
    assert load_yaml(str(path)) == {"teacher_epochs": 2, "train": {"epochs": 1}}
    with pytest.raises(NadError, match="no preset named 'dmeo'"):
        load_yaml("dmeo")
    with pytest.raises(NadError, match="no such file"):
        load_yaml(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(NadError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(NadError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "evil.yaml").write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(NadError, match="not valid YAML"):
        load_yaml(tmp_path / "evil.yaml")


@dataclass(frozen=True)
class Outer:
    inner: OptimConfig | None = None
    names: tuple[str, ...] = field(default_factory=tuple)


def test_from_mapping_optional_nested():
    assert from_mapping(Outer, {"inner": None}).inner is None
    assert from_mapping(Outer, {"inner": {"lr": 2}}).inner == OptimConfig(lr=2.0)
    assert from_mapping(Outer, {"names": "a"}).names == ("a",)
