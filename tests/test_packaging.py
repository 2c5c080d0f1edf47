"""A non-editable install (a wheel, as `pip install git+<repo>` builds) ships configs/ as
``kyx.configs``, and `pretrain.py:tiny` / `configs/pretrain.py:tiny` resolve to those
files from a directory that has no configs/ of its own."""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, pathlib, kyx
from kyx import config
out = {"kyx": kyx.__file__, "version": kyx.__version__}
for spec in ("pretrain.py:tiny", "configs/moe.py:tiny"):
    path, preset = config.split_spec(spec)
    out[spec] = [str(config.find_file(path)), config.load(spec).model.d_model]
print(json.dumps(out))
"""


def _build_wheel(tmp_path) -> str:
    """The wheel of a copy of the source tree (pip's build/ stays out of the checkout)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("kyx", "configs"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=ignore)
    shutil.copy(os.path.join(ROOT, "setup.py"), src)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(src)], check=True, capture_output=True)
    (wheel,) = out.glob("kyx-*.whl")
    return str(wheel)


def test_wheel_ships_the_configs_and_resolves_them(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
    assert "__init__.py" in shipped and "pretrain.py" in shipped
    assert {f"kyx/configs/{f}" for f in shipped} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    work = tmp_path / "work"  # no configs/ here
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["kyx"].startswith(str(site))
    assert got["version"] == importlib.metadata.version("kyx")  # setup.py's, via metadata
    assert got["pretrain.py:tiny"] == [str(site / "kyx" / "configs" / "pretrain.py"), 128]
    assert got["configs/moe.py:tiny"][0] == str(site / "kyx" / "configs" / "moe.py")
