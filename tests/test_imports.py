"""Module structure: every kyx module imports on its own, no import circle (counting the
imports inside functions too), and the packages keep their layering."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KYX = os.path.join(ROOT, "kyx")

# package -> kyx packages it may import (besides itself and the leaf modules below)
LEAVES = {"kyx.errors", "kyx.axes", "kyx.fileio", "kyx.logs", "kyx.registry", "kyx.build_lock",
          "kyx.distributed", "kyx.compilation_cache"}
LAYERS = {
    "kyx.config": set(),
    "kyx.sharding": set(),
    "kyx.telemetry": set(),
    "kyx.metrics": {"kyx.telemetry"},
    "kyx.scaling": {"kyx.telemetry"},
    "kyx.distributed": set(),
    "kyx.objectives": set(),
    "kyx.model": {"kyx.sharding", "kyx.objectives"},
    "kyx.data": {"kyx.config"},
    "kyx.checkpoint": {"kyx.config", "kyx.sharding", "kyx.model"},
    "kyx.interop": {"kyx.config", "kyx.sharding", "kyx.model", "kyx.data", "kyx.checkpoint"},
    "kyx.rewards": {"kyx.config", "kyx.sharding", "kyx.model", "kyx.data", "kyx.checkpoint",
                    "kyx.interop"},
    "kyx.train": {"kyx.config", "kyx.sharding", "kyx.metrics", "kyx.telemetry",
                  "kyx.scaling", "kyx.objectives", "kyx.model",
                  "kyx.data", "kyx.checkpoint", "kyx.interop", "kyx.rewards"},
    "kyx.alignment": {"kyx.config", "kyx.sharding", "kyx.model", "kyx.data", "kyx.checkpoint",
                      "kyx.interop", "kyx.rewards", "kyx.train"},
    "kyx.api": {"kyx.sharding", "kyx.model", "kyx.data", "kyx.checkpoint", "kyx.interop",
                "kyx.train"},
    "kyx.analysis": {"kyx.config", "kyx.sharding", "kyx.objectives", "kyx.model", "kyx.data",
                     "kyx.checkpoint", "kyx.interop", "kyx.train", "kyx.api"},
}


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(KYX):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(root, f)
    return out


def _imports(path: str, modules) -> set[str]:
    """kyx modules imported anywhere in the file (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    done, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in done:
            return
        stack.append(m)
        for dep in sorted(graph[m]):
            if not (m.startswith(dep + ".") or dep == "kyx"):  # a package's own __init__
                visit(dep)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _package(module: str) -> str:
    for pkg in sorted(LAYERS, key=len, reverse=True):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return module


def test_packages_keep_their_layering():
    bad = []
    for m, deps in _graph().items():
        pkg = _package(m)
        if pkg not in LAYERS or m.endswith("__main__"):
            continue  # kyx.cli, kyx.commands and entry points: the top
        for dep in deps:
            dpkg = _package(dep)
            if dep in LEAVES or dpkg == pkg or dep == "kyx":
                continue
            if dpkg not in LAYERS[pkg]:
                bad.append(f"{m} imports {dep}")
    assert not bad, "\n".join(sorted(bad))


def test_every_module_imports_in_isolation():
    """Each module in a fresh child process (forked after the third-party imports, so the
    check costs seconds): a module that only imports after another kyx module fails."""
    modules = sorted(m for m in _modules() if not m.endswith("__main__"))
    script = f"""
import os, sys, importlib, traceback
sys.path.insert(0, {ROOT!r})
import jax, flax, optax, orbax.checkpoint, grain, tensorflow_datasets, numpy  # noqa
failed = []
for name in {modules!r}:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED", failed)
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=600)
    assert "FAILED []" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
