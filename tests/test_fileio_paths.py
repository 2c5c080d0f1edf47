"""The workdir path layer (kyx/fileio.py): local paths and registered storage URLs become
etils.epath paths; an unknown scheme, a scheme kyx cannot keep a workdir on,
or a missing backend is one KyxError naming what to do, before anything is written."""
import importlib.util
import os

import pytest
from etils import epath

from kyx import fileio
from kyx.cli import main as cli_main
from kyx.errors import KyxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")


def test_local_paths_and_gs_urls_are_epaths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fileio.as_path("runs/a") == epath.Path(tmp_path / "runs" / "a")
    assert fileio.as_path("odd/name://x") == epath.Path(tmp_path / "odd" / "name:" / "x")
    assert all(fileio.is_local(p) for p in ("runs/a", "odd/name://x", tmp_path))
    assert not fileio.is_local("gs://bucket/run")
    gs = fileio.as_path("gs://bucket/run")  # gcsfs is a test dependency
    assert str(gs / "config.json") == "gs://bucket/run/config.json"


def test_unknown_and_unsupported_schemes_are_clear_errors():
    with pytest.raises(KyxError, match=r"unknown storage scheme foo://.*gs:// URL"):
        fileio.as_path("foo://bucket/run")
    with pytest.raises(KyxError, match=r"cannot live on s3://: Orbax .*mountpoint-s3"):
        fileio.as_path("s3://bucket/run")


def test_missing_backend_names_the_pip_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(fileio.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(KyxError, match=r"need the gcsfs package.*pip install 'kyx\[gcs\]'"):
        fileio.as_path("gs://bucket/run")


@pytest.mark.parametrize("workdir, message", [
    ("foo://bucket/run", "unknown storage scheme foo://"),
    ("file:///tmp/run", "unknown storage scheme file://"),
    ("s3://bucket/run", "cannot live on s3://"),
])
def test_kyx_train_on_a_bad_url_fails_before_writing_anything(workdir, message, tmp_path,
                                                              monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--config", PRETRAIN + ":tiny", "--workdir", workdir]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []  # no local folder named `foo:` or `s3:`
