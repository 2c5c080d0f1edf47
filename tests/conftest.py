"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere."""
import os

# 8 simulated devices; and XLA's CPU backend without LLVM's expensive passes: a tiny test
# program runs in milliseconds but takes seconds to compile, so compiling it at -O0 cuts
# the suite's time by about a third. HLO-level optimisation is unchanged and there is no
# fast-math either way, but the last bits may differ from an -O2 build (e.g. FMA
# contraction): a bit-for-bit comparison is only between processes with the same flags.
TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                  "--xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import shutil  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402

# One persistent compilation cache for the test session, never ~/.cache: the tests compile
# the same programs (a tiny model's step, eval, decode) over and over, in this process, in
# the other xdist worker and in CLI subprocesses. The process that starts pytest creates the
# directory before xdist starts its workers, which inherit the variables; it deletes it at
# the end. KYX_COMPILATION_CACHE=0 switches it off (tests/test_compilation_cache.py tests
# the switch itself).
SESSION_CACHE_ENV = "KYX_TEST_SESSION_CACHE"
_OWNS_CACHE = SESSION_CACHE_ENV not in os.environ
if _OWNS_CACHE:
    os.environ[SESSION_CACHE_ENV] = tempfile.mkdtemp(prefix="kyx_test_jax_cache_")
os.environ.setdefault("KYX_COMPILATION_CACHE", "1")
os.environ.setdefault("KYX_COMPILATION_CACHE_DIR", os.environ[SESSION_CACHE_ENV])

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
from kyx.compilation_cache import enable_compilation_cache  # noqa: E402

enable_compilation_cache()


def pytest_unconfigure(config):
    if _OWNS_CACHE:
        shutil.rmtree(os.environ[SESSION_CACHE_ENV], ignore_errors=True)

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


@pytest.fixture
def quiet():
    """kyx's default (not --verbose) library logging for the test, whatever it sets."""
    from kyx import logs

    was = logs.verbose()
    logs.set_verbose(False)
    yield
    logs.set_verbose(was)


@pytest.fixture(scope="session")
def packed_batch():
    """packed_batch(vocab_size, seed=0, b=8, t=16): random tokens in two packed documents
    per row (segment ids 1, 2; the last 3 positions of row 0 are padding)."""
    import numpy as np

    def make(vocab_size, seed=0, b=8, t=16):
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, vocab_size, (b, t)).astype(np.int32)
        seg = np.ones((b, t), np.int32)
        seg[:, t // 2:] = 2
        seg[0, -3:] = 0
        pos = np.concatenate([np.arange(t // 2), np.arange(t - t // 2)])[None].repeat(b, 0)
        return {"tokens": tokens, "targets": np.roll(tokens, -1, 1), "segment_ids": seg,
                "positions": pos.astype(np.int32), "loss_mask": (seg > 0).astype(np.float32)}
    return make


@pytest.fixture(scope="session")
def lower_pretrain_step():
    """lower_pretrain_step(cfg, step_fn, shardings, abstract, mesh, rules) -> StableHLO text of
    the pretraining step lowered on abstract sharded inputs (no memory is allocated);
    `shardings` / `abstract` are those of the whole TrainState."""
    import jax.numpy as jnp

    from kyx import sharding
    from kyx.train import loop, pretrain

    def lower(cfg, step_fn, shardings, abstract, mesh, rules):
        b, t = cfg.data.batch_size, cfg.data.seq_len
        batch_sh = loop.batch_shardings(pretrain.BATCH_AXES, mesh, rules)
        batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "loss_mask" else jnp.int32,
                                         sharding=batch_sh[k]) for k in batch_sh}
        target = sharding.with_shardings(abstract, shardings)
        with sharding.use_mesh(mesh, rules):   # the step as the training loop jits it
            return loop.jit_step(step_fn, shardings, batch_sh).lower(
                target, batch, jax.random.key(0)).as_text()
    return lower


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


LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>")   # ids 0..4
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """llama3_tokenizer(path, template=LLAMA3_TEMPLATE) -> path holding a byte-level BPE
    tokenizer.json (vocab 400) with Llama 3's special tokens (ids 0..4), its
    tokenizer_config.json (bos, eos = <|eot_id|>, the template) and a config.json naming
    the ids: a Hugging Face chat model's tokenizer made without a download."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def write(path, template=LLAMA3_TEMPLATE):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(LLAMA3_SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        text = ["def add(a, b):\n    return a + b\n", "Answer in Python. Now three numbers.\n"]
        tok.train_from_iterator(text * 30, trainer)
        os.makedirs(path, exist_ok=True)
        tok.save(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast",
                       "bos_token": LLAMA3_SPECIALS[0], "eos_token": "<|eot_id|>",
                       "chat_template": template}, f)
        config = os.path.join(path, "config.json")
        if not os.path.exists(config):
            with open(config, "w") as f:
                json.dump({"model_type": "llama", "bos_token_id": 0, "eos_token_id": 4}, f)
        return path
    return write
