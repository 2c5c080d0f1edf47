"""The `kyx` command line: --version, train --help (shipped configs and presets, override
syntax), --print-config (a validating dry run), --verbose, and the config files shipped
with the package (`--config pretrain.py:tiny` without a local configs/)."""
import importlib.metadata
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from kyx import config as config_lib
from kyx import logs
from kyx.checkpoint.manager import Checkpointer
from kyx.cli import main as cli_main
from kyx.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def test_version_comes_from_the_package_metadata(capsys):
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kyx {importlib.metadata.version('kyx')}"


def test_train_help_lists_config_presets_and_overrides(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE[:PRESET]" in out and "--print-config" in out
    assert "--config.a.b=VALUE" in out
    assert "pretrain.py [tiny, small, 1b, 7b]" in out and "moe.py [tiny, small, 64e]" in out
    shipped = [f for f in os.listdir(CONFIGS) if f.endswith(".py") and f != "__init__.py"]
    assert len(shipped) >= 8
    for name in shipped:  # every shipped file with the presets its get_config accepts
        presets = config_lib.describe_file(Path(CONFIGS, name)).presets
        assert presets and f"{name} [{', '.join(presets)}]" in out
        for preset in presets[:1]:
            config_lib.load(f"{name}:{preset}")


def test_other_commands_keep_their_help(capsys):
    for command in ("sample", "convert", "excp", "upcycle", "rejection-sample", "iterate"):
        with pytest.raises(SystemExit) as e:
            cli_main([command, "--help"])
        assert e.value.code == 0
        assert f"usage: kyx {command}" in capsys.readouterr().out


def test_print_config_is_a_validating_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped file is used
    assert cli_main(["train", "--config", "pretrain.py:tiny", "--print-config",
                     "--config.optim.lr=1e-3", "--config.train.steps", "7"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = config_lib.to_dict(config_lib.load(os.path.join(CONFIGS, "pretrain.py:tiny"),
                                                  ["optim.lr=1e-3", "train.steps=7"]))
    assert printed == expected and printed["train"]["steps"] == 7
    assert os.listdir(tmp_path) == []  # nothing written, not even with --workdir
    assert cli_main(["train", "--config", "pretrain.py:tiny", "--print-config",
                     "--workdir", str(tmp_path / "run")]) == 0
    assert os.listdir(tmp_path) == []
    capsys.readouterr()
    code = cli_main(["train", "--config", "pretrain.py:tiny", "--print-config",
                     "--config.optim.lr=-1", "--config.train.steps=0"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid config (2 problems)" in err
    assert "optim.lr = -1.0" in err and "train.steps = 0" in err
    with pytest.raises(SystemExit) as e:  # a real run still needs its workdir
        cli_main(["train", "--config", "pretrain.py:tiny"])
    assert e.value.code == 2 and "--workdir is required" in capsys.readouterr().err


def test_shipped_configs_resolve_without_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = config_lib.load("pretrain.py:tiny")
    assert config_lib.to_dict(config_lib.load("configs/pretrain.py:tiny")) == \
        config_lib.to_dict(shipped)
    assert config_lib.find_file(Path("moe.py")).parent == config_lib.shipped_dir()
    # a local file of that name wins
    os.mkdir("configs")
    (tmp_path / "configs" / "pretrain.py").write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'local': arg})\n")
    assert config_lib.load("configs/pretrain.py:tiny").local == "tiny"
    with pytest.raises(ConfigError) as e:
        config_lib.load("pretrian.py:tiny")
    assert "does not exist" in str(e.value) and "pretrain.py [tiny, small, 1b, 7b]" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):  # other folders: no fallback
        config_lib.load("elsewhere/pretrain.py:tiny")


def test_verbose_is_global_before_or_after_the_command(quiet, capsys):
    for argv in (["--verbose", "sample", "--help"], ["sample", "--help", "--verbose"]):
        logs.set_verbose(False)
        with pytest.raises(SystemExit):
            cli_main(argv)
        assert logs.verbose()
        assert logging.getLogger("absl").level == logging.INFO
    capsys.readouterr()


def test_read_only_checkpoints_open_without_library_warnings(tmp_path, quiet, caplog):
    """kyx.load / sample / convert open checkpoints read-only: no orbax warning lines
    unless --verbose."""
    writer = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    writer.save_params(0, {"w": np.ones((2, 3), np.float32)}, {"trainer": "pretrain"})
    writer.close()
    caplog.set_level(logging.INFO, logger="absl")
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(str(tmp_path / "ckpt"), read_only=True).steps() == [0]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    logs.set_verbose(True)
    Checkpointer(str(tmp_path / "ckpt"), read_only=True)
    assert any(r.getMessage().startswith("Given directory is read only")
               for r in caplog.records)
