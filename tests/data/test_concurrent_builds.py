"""Two processes that need the same corpus, tokenizer and token cache at the same moment
(a sweep on two cores, two notebooks on a fresh machine) both get them: one builds, the
other waits and reuses (kyx/build_lock.py). Before the lock, the second tfds build died on
renaming its temporary folder into place (FileExistsError)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from kyx.build_lock import exclusive_build

# Imports first (slow, unequal), then a shared start line, so the builds really overlap.
BUILD = textwrap.dedent("""
    import json, os, sys, time
    from kyx import data
    from kyx.data import pipeline, token_cache
    cfg = data.default_config()
    cfg.data_dir, cfg.name, cfg.path = sys.argv[1], "text_files", sys.argv[2]
    cfg.tokenizer.vocab_size, cfg.seq_len, cfg.batch_size = 512, 64, 4
    start = float(sys.argv[3])
    while time.time() < start:
        time.sleep(0.01)
    corpus, tokenizer = pipeline.prepare(cfg)
    cache = token_cache.load(corpus, cfg.train_split, tokenizer, cfg.data_dir, workers=0)
    print(json.dumps({"corpus": corpus.builder.info.full_name,
                      "tokenizer": token_cache.tokenizer_digest(tokenizer),
                      "tokens": int(cache.info["tokens"]), "dir": cache.directory}))
""")


def test_two_processes_build_one_corpus_tokenizer_and_cache(tmp_path, stdlib_copy):
    texts = stdlib_copy(tmp_path / "texts")
    data_dir = str(tmp_path / "data")
    start = str(time.time() + 12)   # both interpreters have imported kyx by then
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, data_dir, texts, start],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [o.strip().splitlines()[-1] for o, _ in outs]
    assert results[0] == results[1]   # the same corpus, the same tokenizer, one cache
    logs = "".join(o + e for o, e in outs)
    assert logs.count("Building corpus") == 1


HOLD = textwrap.dedent("""
    import sys, time
    from kyx.build_lock import exclusive_build
    with exclusive_build(sys.argv[1], "an artifact"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_build_waits_for_the_holder_then_proceeds(tmp_path, capsys):
    path = str(tmp_path / "artifact")
    holder = _holder(path, 3)
    t0 = time.monotonic()
    with exclusive_build(path, "an artifact"):
        waited = time.monotonic() - t0
    holder.wait()
    assert waited > 2.0   # entered only once the holder let go (it holds 3 s after "held")
    assert "Waiting for another process to finish building an artifact" in capsys.readouterr().out


def test_a_killed_builder_does_not_block_the_next(tmp_path):
    path = str(tmp_path / "artifact")
    holder = _holder(path, 600)
    os.kill(holder.pid, signal.SIGKILL)   # kill -9 mid-build: the kernel drops the flock
    holder.wait()
    t0 = time.monotonic()
    with exclusive_build(path, "an artifact"):
        assert time.monotonic() - t0 < 5


def test_a_read_only_cache_is_used_without_a_lock(tmp_path, monkeypatch):
    """A prepared data dir shared read-only: no lock file can be made there, and none is
    needed to read; the build itself (if anything is missing) fails with its own error."""
    path = str(tmp_path / "artifact")
    monkeypatch.setattr("kyx.build_lock.os.access", lambda *a: False)
    with exclusive_build(path, "an artifact"):
        pass
    assert not os.path.exists(path + ".lock")
