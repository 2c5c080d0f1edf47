"""kyx.config: loading by path/preset, typed overrides, helpful errors, JSON round trip."""
import json
import textwrap
from pathlib import Path

import pytest

from kyx import config
from kyx.errors import ConfigError

CONFIG_SRC = textwrap.dedent('''
    import ml_collections
    from ml_collections import config_dict

    PRESETS = ("tiny", "small")

    def get_config(arg=None):
        arg = arg or "tiny"
        if arg not in PRESETS:
            raise ValueError(f"unknown preset {arg!r}")
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict()
        c.model.num_layers = 2 if arg == "tiny" else 12
        c.model.d_model = 64
        c.model.dropout = 0.0
        c.model.tie_embeddings = False
        c.model.mesh_shape = (1, 8)
        c.model.names = ("a", "b")
        c.lr = 3e-4
        c.name = arg
        c.init_from = None
        c.seed = config_dict.placeholder(int)
        return c
''')


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(CONFIG_SRC)
    return path


def test_load_default_and_preset(cfg_file):
    assert config.load(str(cfg_file)).model.num_layers == 2
    small = config.load(f"{cfg_file}:small")
    assert small.model.num_layers == 12 and small.name == "small"


def test_overrides_of_each_type(cfg_file):
    cfg = config.load(f"{cfg_file}:tiny", [
        "--config.model.num_layers=4",
        "model.dropout=0.1",
        "lr=1e-3",
        "model.d_model=1e3",          # whole-number float text is fine for an int field
        "model.tie_embeddings=yes",
        "model.mesh_shape=(2,4)",
        "model.names=x,y,z",
        "name=my run",
        "init_from=/ckpt/step_100",
        "seed=7",
    ])
    assert cfg.model.num_layers == 4 and type(cfg.model.num_layers) is int
    assert cfg.model.dropout == 0.1 and cfg.lr == 1e-3
    assert cfg.model.d_model == 1000
    assert cfg.model.tie_embeddings is True
    assert cfg.model.mesh_shape == (2, 4)
    assert cfg.model.names == ("x", "y", "z")
    assert cfg.name == "my run"
    assert cfg.init_from == "/ckpt/step_100"
    assert cfg.seed == 7


@pytest.mark.parametrize("raw, expected", [("1,2", (1, 2)), ("[4, 2]", (4, 2)), ("8", (8,)),
                                           ("()", ())])
def test_tuple_override_forms(cfg_file, raw, expected):
    assert config.load(str(cfg_file), [f"model.mesh_shape={raw}"]).model.mesh_shape == expected


def test_int_to_float_field_and_bool_forms(cfg_file):
    assert config.load(str(cfg_file), ["lr=1"]).lr == 1.0
    for raw, want in [("true", True), ("0", False), ("No", False), ("1", True)]:
        assert config.load(str(cfg_file), [f"model.tie_embeddings={raw}"]).model.tie_embeddings \
            is want


def test_none_field_uses_literal_eval(cfg_file):
    assert config.load(str(cfg_file), ["init_from=3"]).init_from == 3
    assert config.load(str(cfg_file), ["init_from=(1, 2)"]).init_from == (1, 2)


def test_two_item_override(cfg_file):
    cfg = config.load(str(cfg_file), ["--config.model.num_layers", "6"])
    assert cfg.model.num_layers == 6


def test_unknown_key_suggests(cfg_file):
    with pytest.raises(ConfigError, match=r"model\.num_layer'.*did you mean: model\.num_layers"):
        config.load(str(cfg_file), ["model.num_layer=3"])
    with pytest.raises(ConfigError, match="top-level keys are"):
        config.load(str(cfg_file), ["zzzzzz=3"])


@pytest.mark.parametrize("override, expected", [
    ("model.num_layers=two", "int"), ("model.num_layers=1.5", "int"),
    ("lr=fast", "float"), ("model.tie_embeddings=maybe", "bool"),
    ("model.mesh_shape=a,b", "tuple"),
])
def test_bad_value_names_key_value_type(cfg_file, override, expected):
    key, raw = override.split("=")
    with pytest.raises(ConfigError) as info:
        config.load(str(cfg_file), [override])
    msg = str(info.value)
    assert key in msg and repr(raw) in msg and expected in msg


def test_group_and_malformed_overrides(cfg_file):
    with pytest.raises(ConfigError, match="is a group"):
        config.load(str(cfg_file), ["model=3"])
    with pytest.raises(ConfigError, match="expected a.b=VALUE"):
        config.load(str(cfg_file), ["model.num_layers"])


def test_load_errors(tmp_path, cfg_file):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no get_config"):
        config.load(str(tmp_path / "empty.py"))
    with pytest.raises(ConfigError) as info:
        config.load(f"{cfg_file}:huge")
    assert str(cfg_file) in str(info.value) and "tiny, small" in str(info.value)
    (tmp_path / "noarg.py").write_text(
        "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n")
    assert config.load(str(tmp_path / "noarg.py")).a == 1
    with pytest.raises(ConfigError, match="no presets"):
        config.load(f"{tmp_path / 'noarg.py'}:tiny")


def test_parse_cli():
    argv = ["--workdir", "/tmp/w", "--config", "configs/lm.py:tiny", "--config.lr=1e-3",
            "--config.model.num_layers", "4", "--steps", "10"]
    assert config.parse_cli(argv) == ("configs/lm.py:tiny", ["lr=1e-3", "model.num_layers=4"],
                                      ["--workdir", "/tmp/w", "--steps", "10"])
    assert config.parse_cli(["--config=a.py", "x"]) == ("a.py", [], ["x"])
    assert config.parse_cli(["--workdir", "w"]) == (None, [], ["--workdir", "w"])
    with pytest.raises(ConfigError):
        config.parse_cli(["--config"])


def test_split_spec():
    assert config.split_spec("configs/lm.py:small") == (Path("configs/lm.py"), "small")
    assert config.split_spec("configs/lm.py") == (Path("configs/lm.py"), None)


def test_dump_load_json_round_trip(cfg_file, tmp_path):
    cfg = config.load(f"{cfg_file}:small", ["seed=3", "init_from=(1, 2)"])
    path = config.dump(cfg, tmp_path / "work" / "config.json")
    text = path.read_text()
    assert json.loads(text)["model"]["mesh_shape"] == [1, 8]
    assert list(json.loads(text)) == sorted(json.loads(text))
    back = config.load_json(path)
    assert config.to_dict(back) == config.to_dict(cfg)
    assert back == cfg  # tuples come back as tuples
    assert not list(tmp_path.glob("work/.config.json.*"))  # no temp file left behind


def test_load_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config.load_json(tmp_path / "bad.json")


def _workdir(tmp_path, steps=()):
    """A workdir whose config.json is cut mid-way (and mid-character: a non-ASCII value),
    with a stored config next to each checkpoint step (as Orbax writes it)."""
    resolved = {"model": {"d_model": 32}, "trainer": "pretrain",
                "data": {"records": {"system": "caf\u00e9 \u00e9t\u00e9"}}}
    work = tmp_path / "work"
    work.mkdir()
    text = json.dumps(resolved, ensure_ascii=False).encode()
    cut = text.index("\u00e9".encode()) + 1  # inside the 2-byte UTF-8 of the first é
    (work / "config.json").write_bytes(text[:cut])
    for step in steps:
        meta = work / "checkpoints" / str(step) / "config"
        meta.mkdir(parents=True)
        stored = dict(resolved, model={"d_model": step})
        (meta / "metadata").write_text(json.dumps(stored))
    return work


def test_truncated_workdir_config_names_file_and_stored_copies(tmp_path):
    work = _workdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        config.load_json(work / "config.json")
    text = str(e.value)
    assert str(work / "config.json") in text and "not valid JSON" in text
    assert "checkpoints/<step>/config/metadata" in text


def test_truncated_workdir_config_falls_back_to_newest_checkpoint_config(tmp_path, capsys):
    work = _workdir(tmp_path, steps=(4, 12))
    (work / "checkpoints" / "12" / "config" / "metadata").write_text('{"model": ')  # damaged
    cfg = config.load_json(work / "config.json")
    assert cfg.model.d_model == 4 and cfg.data.records.system == "caf\u00e9 \u00e9t\u00e9"
    out = capsys.readouterr().out
    assert "WARNING" in out and str(work / "config.json") in out
    assert str(work / "checkpoints" / "4" / "config" / "metadata") in out


def test_truncated_workdir_config_through_the_cli(tmp_path, capsys):
    from kyx.cli import main as cli_main

    work = _workdir(tmp_path)
    code = cli_main(["sample", "--workdir", str(work), "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "config.json" in err and "checkpoints/<step>/config/metadata" in err


def test_lock_returns_locked_copy(cfg_file):
    cfg = config.load(str(cfg_file))
    locked = config.lock(cfg)
    with pytest.raises(AttributeError):
        locked.model.num_layer = 3
    locked.model.num_layers = 5  # existing keys stay writable
    assert cfg.model.num_layers == 2  # original untouched
    cfg.new_key = 1  # original is not locked


def test_from_preset_merges_nested_and_names_close_presets():
    import ml_collections
    base = ml_collections.ConfigDict({"model": {"d_model": 8, "heads": 2}, "lr": 1.0})
    presets = {"tiny": {"model": {"d_model": 16}}, "small": {"lr": 0.5}}
    cfg = config.from_preset(base, presets, None)
    assert cfg.model.d_model == 16 and cfg.model.heads == 2 and cfg.lr == 1.0
    assert presets["tiny"] == {"model": {"d_model": 16}}  # presets are not mutated
    with pytest.raises(ConfigError, match="did you mean small"):
        config.from_preset(base, presets, "smal")
    with pytest.raises(ConfigError, match="unknown key 'model.d_modl'"):
        config.from_preset(base, {"x": {"model": {"d_modl": 1}}}, "x")
