"""The typed configuration schema (pdenets._schema) shared by ``train`` and ``hjb``: every field
type accepted and refused from a TOML file, a dict and ``--set``; typo suggestions; TOML round
trips; the deprecated comma-separated ``train.level_epochs``."""

from __future__ import annotations

import dataclasses
import tomllib
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from pdenets import _schema
from pdenets.config import Config, config_from_dict, load_config
from pdenets.errors import ConfigError
from pdenets.hjb.config import HJBConfig, load_hjb_config
from pdenets.multilevel import level_epochs

SMALL = ["data.name=iris", "train.epochs=4", "train.batch_size=32", "model.steps=4",
         "model.intervals=2", "model.width=8", "model.control_size=5"]


@dataclass
class Inner:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    name: str = "a"
    ints: list[int] = field(default_factory=list)
    nums: list[float] = field(default_factory=lambda: [1.0])
    num_or_list: float | list[float] = 0.0
    int_or_list: int | list[int] = 3
    rows: list[list[float]] = field(default_factory=list)
    maybe: int | None = None


@dataclass(kw_only=True)
class Root:
    _aliases: ClassVar[dict[str, str]] = {"short": "inner.name"}

    top: int = 0
    need: float
    inner: Inner = field(default_factory=Inner)


def _file(tmp_path, text: str):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


# (key, TOML text, expected value) accepted from a file
ACCEPT_FILE = [
    ("n", "-7", -7), ("x", "2", 2.0), ("x", "-1.5e-3", -1.5e-3), ("flag", "true", True),
    ("name", '"héllo \\"q\\""', 'héllo "q"'), ("ints", "[1, 2, 3]", [1, 2, 3]),
    ("ints", "[]", []), ("nums", "[1, 2.5]", [1.0, 2.5]), ("num_or_list", "4", 4.0),
    ("num_or_list", "[0.5, 1]", [0.5, 1.0]), ("int_or_list", "[5, 6]", [5, 6]),
    ("int_or_list", "9", 9), ("rows", "[[1, 2], [3.5]]", [[1.0, 2.0], [3.5]]),
    ("maybe", "4", 4),
]
# (key, TOML text) refused from a file, with a fragment of the message
REFUSE_FILE = [
    ("n", '"5"', "expected a int"), ("n", "2.5", "expected a int"), ("n", "true", "int"),
    ("x", '"0.5"', "expected a float"), ("x", "nan", "finite"), ("x", "inf", "finite"),
    ("x", "-inf", "finite"), ("x", "false", "float"), ("flag", "1", "expected a bool"),
    ("flag", '"true"', "bool"), ("name", "3", "expected a str"), ("ints", "3", "list[int]"),
    ("ints", "[1, 2.0]", "list[int]"), ("ints", '"1,2"', "list[int]"),
    ("nums", "[1, nan]", "finite"), ("nums", '["a"]', "list[float]"),
    ("num_or_list", '"1"', "float | list[float]"), ("num_or_list", "[[1]]", "list[float]"),
    ("int_or_list", "1.5", "int | list[int]"), ("int_or_list", "[1, true]", "list[int]"),
    ("rows", "[1, 2]", "list[list[float]]"), ("rows", "[[1, inf]]", "finite"),
    ("maybe", '"none"', "int"),
]


@pytest.mark.parametrize("key, text, expected", ACCEPT_FILE)
def test_each_type_accepted_from_a_file(tmp_path, key, text, expected):
    cfg = _schema.load(Root, _file(tmp_path, f"need = 1\n[inner]\n{key} = {text}\n"), [])
    value = getattr(cfg.inner, key)
    assert value == expected and type(value) is type(expected)
    if isinstance(expected, list) and expected and isinstance(expected[0], list):
        assert all(type(x) is float for row in value for x in row)


@pytest.mark.parametrize("key, text, message", REFUSE_FILE)
def test_each_type_refused_from_a_file(tmp_path, key, text, message):
    with pytest.raises(ConfigError, match=f"inner.{key}") as e:
        _schema.load(Root, _file(tmp_path, f"need = 1\n[inner]\n{key} = {text}\n"), [])
    assert message in str(e.value)


# (key, --set text, expected value)
ACCEPT_SET = [
    ("n", "12", 12), ("x", "3", 3.0), ("x", "1e-3", 1e-3), ("flag", "yes", True),
    ("flag", "False", False), ("flag", "0", False), ("name", " spaced text ", " spaced text "),
    ("name", "[1, 2]", "[1, 2]"), ("ints", "[4, 5]", [4, 5]), ("ints", "[]", []),
    ("nums", "[1, 0.25]", [1.0, 0.25]), ("num_or_list", "0.5", 0.5),
    ("num_or_list", "[1, 2]", [1.0, 2.0]), ("int_or_list", "[41,41]", [41, 41]),
    ("int_or_list", "21", 21), ("rows", "[[0.5, 1], [2, 3]]", [[0.5, 1.0], [2.0, 3.0]]),
    ("maybe", "none", None), ("maybe", "8", 8),
]
REFUSE_SET = [
    ("n", "five", "expected a int"), ("n", "2.5", "expected a int"), ("x", "abc", "float"),
    ("x", "nan", "finite"), ("x", "inf", "finite"), ("x", "1e999", "finite"),
    ("flag", "maybe", "bool"), ("ints", "1,2", "list[int]"), ("ints", "[1, 2.5]", "list[int]"),
    ("ints", "[1, 2", "not a TOML list"), ("nums", "[nan]", "finite"),
    ("num_or_list", "x", "float | list[float]"), ("int_or_list", "4.5", "int | list[int]"),
    ("rows", "[1, 2]", "list[list[float]]"), ("maybe", "", "int"),
]


@pytest.mark.parametrize("key, text, expected", ACCEPT_SET)
def test_each_type_accepted_from_set(key, text, expected):
    cfg = _schema.load(Root, None, ["need=2", f"inner.{key}={text}"])
    value = getattr(cfg.inner, key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key, text, message", REFUSE_SET)
def test_each_type_refused_from_set(key, text, message):
    with pytest.raises(ConfigError, match=f"inner.{key}") as e:
        _schema.load(Root, None, ["need=2", f"inner.{key}={text}"])
    assert message in str(e.value)


def test_dicts_are_checked_like_files_and_required_keys_stay_required(tmp_path):
    assert _schema.from_dict(Root, {"need": 3, "inner": {"x": 1}}).inner.x == 1.0
    with pytest.raises(ConfigError, match="inner.n: expected a int, got '3'"):
        _schema.from_dict(Root, {"need": 1, "inner": {"n": "3"}})  # no text parsing
    with pytest.raises(ConfigError, match="missing required key 'need'"):
        _schema.from_dict(Root, {})
    with pytest.raises(ConfigError, match="missing required key 'need'"):
        _schema.load(Root, _file(tmp_path, "top = 1\n"), ["inner.n=2"])
    # --set can supply the required key the file lacks; --set wins over the file
    cfg = _schema.load(Root, _file(tmp_path, "top = 1\n[inner]\nn = 5\n"), ["need=4",
                                                                           "inner.n=6"])
    assert (cfg.need, cfg.inner.n) == (4.0, 6)
    with pytest.raises(ConfigError, match="inner is a section"):
        _schema.from_dict(Root, {"need": 1, "inner": 3})
    with pytest.raises(ConfigError, match="top is a value"):
        _schema.from_dict(Root, {"need": 1, "top": {"a": 1}})


def test_aliases_address_their_target():
    assert _schema.load(Root, None, ["need=1", "short=b"]).inner.name == "b"
    assert _schema.from_dict(Root, {"need": 1, "short": "c"}).inner.name == "c"
    with pytest.raises(ConfigError, match="both given and differ"):
        _schema.from_dict(Root, {"need": 1, "short": "c", "inner": {"name": "d"}})


# ---------------------------------------------------------------------------------------------
# typo suggestions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets, message", [
    (["train.bacth_size=3"], "did you mean 'train.batch_size'"),
    (["trian.epochs=3"], r"unknown config table \[trian\]; did you mean \[train\]"),
    (["sed=3"], "did you mean 'seed'"),
    (["model.widht=3"], "did you mean 'model.width'"),
    (["train.zzzz=1"], "known keys: method, epochs"),
    (["train.epochs.x=1"], "train.epochs is not a section"),
])
def test_train_typo_suggestions_from_set(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_typo_suggestions_from_files(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        load_config(_file(tmp_path, "[train]\nepocs = 3\n"))
    with pytest.raises(ConfigError, match=r"did you mean \[model\]"):
        load_config(_file(tmp_path, "[modle]\nwidth = 3\n"))
    with pytest.raises(ConfigError, match=r"unknown config table \[extra\]; known tables"):
        load_hjb_config(_file(tmp_path, "[problem]\nv0 = 0.1\n[extra]\n"))
    with pytest.raises(ConfigError, match="did you mean 'solver.scheme'"):
        load_hjb_config(_file(tmp_path, "[problem]\nv0 = 0.1\n[solver]\nschme = 'x'\n"))
    with pytest.raises(ConfigError, match=r"did you mean \[sampled\]"):
        load_hjb_config(_file(tmp_path, "[problem]\nv0 = 0.1\n"), ["sampeld.starts=3"])
    with pytest.raises(ConfigError, match="did you mean 'method'"):
        load_hjb_config(_file(tmp_path, "[problem]\nv0 = 0.1\n"), ["methd=grid"])


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------
def _reload(tmp_path, cfg):
    p = tmp_path / "rt.toml"
    p.write_text(cfg.to_toml(), encoding="utf-8")
    return p


def test_train_default_and_customized_configs_round_trip(tmp_path):
    cfg = load_config()
    assert load_config(_reload(tmp_path, cfg)) == cfg
    sets = SMALL + ["seed=7", "dtype=float64", "train.method=multilevel", "train.levels=2",
                    "train.level_epochs=[3, 1]", "model.learnable_lifting=true",
                    "objective.alpha=1e-07", "train.lr=0.125", "model.activation=relu"]
    custom = load_config(None, sets)
    assert custom.train.level_epochs == [3, 1] and custom != cfg
    back = load_config(_reload(tmp_path, custom))
    assert back == custom and back.objective.alpha == 1e-7
    assert config_from_dict(custom.to_dict()) == custom
    # a string with quotes, backslash, control characters and non-ASCII survives
    tricky = _schema.from_dict(Root, {"need": 0.1, "inner": {"name": 'a"b\\c\td\x7f é ∂ 😀'}})
    assert _schema.from_dict(Root, tomllib.loads(_schema.to_toml(tricky))) == tricky


def test_hjb_config_round_trips(tmp_path):
    from pathlib import Path

    for example in sorted(Path(__file__).parents[1].glob("examples/hjb_*.toml")):
        cfg = load_hjb_config(example)
        assert load_hjb_config(_reload(tmp_path, cfg)) == cfg, example.name
    cfg = load_hjb_config(Path(__file__).parents[1] / "examples/hjb_tanh.toml",
                          ["solver.scheme=weno5-rk3", "grid.points=[41, 31]",
                           "solver.max_memory_gb=0.5", "direct.steps=none", "method=sampled",
                           "sampled.lo=[-1, -0.5]", "closed_loop.starts=[]"])
    assert (cfg.solver.method, cfg.grid.points, cfg.sampled.lo, cfg.direct.steps) == (
        "sampled", [41, 31], [-1.0, -0.5], None)
    text = cfg.to_toml()
    assert "method" in tomllib.loads(text)["solver"] and "steps" not in tomllib.loads(text)[
        "direct"]
    assert load_hjb_config(_reload(tmp_path, cfg)) == cfg


def test_every_optional_field_defaults_to_none():
    """TOML has no null: to_toml leaves None out, so None must be the default to round-trip."""
    import typing

    def walk(cls):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp)
            elif type(None) in typing.get_args(tp):
                yield cls, f

    for cls, f in [*walk(Config), *walk(HJBConfig)]:
        assert f.default is None, (cls.__name__, f.name)


# ---------------------------------------------------------------------------------------------
# train.level_epochs: a list; the old comma-separated string still read (deprecated)
# ---------------------------------------------------------------------------------------------
def test_level_epochs_is_a_list_and_the_old_string_is_deprecated(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the list form warns about nothing
        cfg = load_config(None, SMALL + ["train.levels=3", "train.level_epochs=[3, 2, 1]"])
    assert cfg.train.level_epochs == [3, 2, 1] and level_epochs(cfg) == [3, 2, 1]
    with pytest.warns(DeprecationWarning, match="comma-separated"):
        old = load_config(None, SMALL + ["train.levels=3", "train.level_epochs=3,2,1"])
    assert old == cfg
    with pytest.warns(DeprecationWarning):
        f = load_config(_file(tmp_path, '[train]\nlevels = 3\nlevel_epochs = "3,2,1"\n'),
                        SMALL)
    assert f.train.level_epochs == [3, 2, 1]
    with pytest.warns(DeprecationWarning):  # an old config.toml / checkpoint: "" = the default
        even = config_from_dict({"train": {"epochs": 10, "levels": 3, "level_epochs": "",
                                           "fine_fraction": 0}})
    assert even.train.level_epochs == [] and level_epochs(even) == [3, 3, 4]
    # the default split: round(fine_fraction · epochs) at the finest level, the rest even
    split = config_from_dict({"train": {"epochs": 80, "levels": 3, "fine_fraction": 0.125}})
    assert level_epochs(split) == [35, 35, 10]
    few = config_from_dict({"train": {"epochs": 1, "levels": 2, "fine_fraction": 0.125}})
    assert level_epochs(few) == [0, 1]  # a coarse level without epochs is skipped
    with pytest.raises(ConfigError, match="fine_fraction"):
        config_from_dict({"train": {"fine_fraction": 1.0}})
    with pytest.raises(ConfigError, match="needs 3 positive integers"):
        load_config(None, SMALL + ["train.levels=3", "train.level_epochs=[3, 0, 1]"])
    with pytest.raises(ConfigError, match="needs 2 positive integers"):
        load_config(None, SMALL + ["train.levels=2", "train.level_epochs=[1, 1, 1]"])
    with pytest.raises(ConfigError, match="train.level_epochs"):
        load_config(None, SMALL + ["train.level_epochs=3,x"])
    with pytest.raises(ConfigError, match="train.level_epochs: expected a list"):
        load_config(_file(tmp_path, "[train]\nlevel_epochs = [1.5]\n"))


def test_python_built_config_is_checked_and_normalized():
    from pdenets.config import validate

    cfg = Config()
    cfg.train.lr = 1  # an integer for a float: normalized
    validate(cfg)
    assert type(cfg.train.lr) is float
    cfg.model.width = "8"
    with pytest.raises(ConfigError, match="model.width: expected a int"):
        validate(cfg)
    cfg = Config()
    cfg.objective.alpha = float("nan")
    with pytest.raises(ConfigError, match="objective.alpha: must be a finite number"):
        validate(cfg)


def test_checkpoints_written_before_the_euler_levels_resume_with_their_old_split():
    """A saved configuration lacking ``train.level_solver`` and ``train.fine_fraction`` (a
    checkpoint written before they existed) keeps the behaviour it was trained with."""
    from pdenets.training.checkpoint import _legacy_keys

    old = {"train": {"method": "multilevel", "levels": 3, "epochs": 10, "level_coarsen": "all"}}
    cfg = config_from_dict(_legacy_keys(old))
    assert cfg.train.level_solver == "" and level_epochs(cfg) == [3, 3, 4]
    new = config_from_dict(old)  # a user's file: today's defaults
    assert new.train.level_solver == "euler" and level_epochs(new) == [2, 3, 5]


def test_example_training_configurations_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples"
    cfg = load_config(root / "digits_conv.toml")
    assert cfg.model.kernel == "conv+lowrank" and cfg.train.fine_fraction == 0.5
    assert cfg.model.intervals == 8
    assert level_epochs(cfg) == [40, 40]
