"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shutil  # noqa: E402
import sysconfig  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_notebook(monkeypatch):
    """run_notebook(name, env) executes colabs/<name> top to bottom in a fresh kernel (one
    CPU device, the given environment variables) and returns its concatenated text output."""
    import nbformat
    from nbclient import NotebookClient

    def run(name: str, env: dict) -> str:
        for key, value in {**env, "XLA_FLAGS": ""}.items():
            monkeypatch.setenv(key, value)
        nb = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": os.path.join(ROOT, "colabs")}}).execute()
        return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.get("outputs", []))
    return run


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """~60 standard-library modules copied into a text directory."""
    src = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(src) if n.endswith(".py"))[:60]
    out = tmp_path_factory.mktemp("corpus")
    for n in names:
        shutil.copy(os.path.join(src, n), out / (n + ".txt"))
    return str(out)


@pytest.fixture(scope="session")
def fast_overrides(small_corpus, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    return [
        "data.name=text_files", f"data.path={small_corpus}", f"data.data_dir={data_dir}",
        "data.seq_len=32", "data.batch_size=8", "data.eval_batches=2",
        "data.tokenizer.vocab_size=384", "data.tokenizer.sample_bytes=400000",
        "model.vocab_size=384", "model.d_model=32", "model.num_layers=2", "model.num_heads=4",
        "model.num_kv_heads=2", "model.max_seq_len=32",
        "train.log_every=1", "train.eval_every=6", "train.measure_mfu=false",
        "optim.warmup_steps=2", "optim.lr=3e-3",
        "checkpoint.every=4", "checkpoint.async_save=false",
    ]
