"""The persistent compilation cache: on by default for CLI commands, off with
KYX_COMPILATION_CACHE=0, in $KYX_COMPILATION_CACHE_DIR or ~/.cache/kyx/jax."""
import os
import subprocess
import sys

import pytest

from kyx import cli
from kyx import compilation_cache as cc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cc.SWITCH_ENV, raising=False)
    monkeypatch.delenv(cc.DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cc.cache_dir() == str(tmp_path / ".cache" / "kyx" / "jax")
    monkeypatch.setenv(cc.DIR_ENV, str(tmp_path / "elsewhere"))
    assert cc.cache_dir() == str(tmp_path / "elsewhere")
    for off in ("0", "false", "No", "off"):
        monkeypatch.setenv(cc.SWITCH_ENV, off)
        assert cc.cache_dir() is None and cc.enable_compilation_cache() is None
    monkeypatch.setenv(cc.SWITCH_ENV, "1")
    assert cc.cache_dir() == str(tmp_path / "elsewhere")


def test_cli_enables_it_before_running_a_command(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "enable_compilation_cache", lambda: calls.append(1))
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    assert calls == [1]
    assert cli.main(["--version"]) == 0 and calls == [1]  # no command, nothing compiled


SCRIPT = """
import os, jax, jax.numpy as jnp, kyx
where = kyx.enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # this program is quick
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8))).block_until_ready()
print(where, sorted(os.listdir(where)) if where else [])
"""


def _run(env):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_programs_are_written_once_and_reused_across_processes(tmp_path):
    env = {cc.SWITCH_ENV: "1", cc.DIR_ENV: str(tmp_path / "cache")}
    first = _run(env)
    assert first.startswith(str(tmp_path / "cache")) and "-cache'" in first
    assert _run(env) == first  # the second process read its programs, wrote none
    assert _run({cc.SWITCH_ENV: "0", cc.DIR_ENV: str(tmp_path / "off")}) == "None []"
    assert not (tmp_path / "off").exists()
