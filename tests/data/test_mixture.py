"""Data mixtures (kyx/data/mixture.py): proportions, exact resume, processes, configs."""
import ml_collections
import numpy as np
import pytest

from kyx.data import mixture, pipeline, token_cache, windows
from kyx.errors import ConfigError, DataError


def _stream(make_memory_corpus, char_tokenizer, tmp_path, letter, n, seq_len=8, batch=16):
    """A window stream over n documents made only of ``letter`` (so rows name their source)."""
    corpus = make_memory_corpus([{"text": letter * (5 + i % 7)} for i in range(n)])
    corpus.fingerprint = f"mem-{letter}-{n}"
    directory = token_cache.build(corpus, "train", char_tokenizer, str(tmp_path), workers=0)
    return windows.WindowIterator(token_cache.TokenCache.open(directory), seq_len, batch,
                                  mixture.source_seed(0, letter), pad_id=char_tokenizer.pad_id)


def _source_of_rows(batch, char_tokenizer):
    """Which letter each row is made of (BOS/EOS aside)."""
    ids = {char_tokenizer.encode(c)[0]: c for c in "abc"}
    out = []
    for row in batch["tokens"]:
        letters = {ids[t] for t in row if t in ids}
        assert len(letters) == 1, letters  # one source per row, never mixed inside a row
        out.append(letters.pop())
    return out


@pytest.fixture
def streams(tmp_path, make_memory_corpus, char_tokenizer):
    def make(batch=16):
        return {c: _stream(make_memory_corpus, char_tokenizer, tmp_path, c, n, batch=batch)
                for c, n in (("a", 40), ("b", 25), ("c", 60))}
    return make


def test_proportions_follow_the_weights_and_rows_name_their_source(streams, char_tokenizer):
    weights = {"a": 0.6, "b": 0.3, "c": 0.1}
    it = mixture.MixtureIterator(streams(), weights, batch_size=16, seed=3)
    seen = [s for _ in range(150) for s in _source_of_rows(next(it), char_tokenizer)]
    counts = {k: seen.count(k) / len(seen) for k in weights}
    for k, w in weights.items():  # 2400 rows: 4 standard deviations of a binomial share
        assert abs(counts[k] - w) < 4 * np.sqrt(w * (1 - w) / len(seen)), counts
    # each source walks its own i.i.d. stream: no window of a source repeats within an epoch
    assert it.rows["b"] == seen.count("b")


def test_exact_resume_and_process_slices(streams):
    weights = {"a": 0.5, "b": 0.25, "c": 0.25}
    it = mixture.MixtureIterator(streams(), weights, batch_size=16, seed=1)
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]
    again = mixture.MixtureIterator(streams(), weights, batch_size=16, seed=1)
    again.set_state(state)
    for want in expected:
        got = next(again)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # two processes: each reads its half of every global batch, together the global batch
    halves = [mixture.MixtureIterator(streams(), weights, batch_size=16, seed=1,
                                      process_index=p, process_count=2) for p in (0, 1)]
    for h in halves:
        h.set_state(state)
    for want in expected:
        parts = [next(h) for h in halves]
        for k in want:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k])
    # a state of other weights or another corpus is refused, not silently reinterpreted
    other = mixture.MixtureIterator(streams(), {"a": 0.2, "b": 0.4, "c": 0.4}, 16, seed=1)
    with pytest.raises(DataError, match="not of this mixture"):
        other.set_state(state)


def test_source_configs_are_checked(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.mixture = ml_collections.ConfigDict({"code": {"name": "stdlib", "weight": 2.0},
                                             "notes": {"name": "text_files", "path": "x",
                                                       "weight": 1.0}})
    sources = mixture.source_configs(cfg)
    assert sources["notes"][0].path == "x" and sources["notes"][1] == 1.0
    assert sources["code"][0].seq_len == cfg.seq_len and not sources["code"][0].mixture
    cfg.mixture.notes.weight = 0.0
    with pytest.raises(ConfigError, match="weight must be a number > 0"):
        mixture.source_configs(cfg)
    cfg.mixture.notes.weight = 1.0
    cfg.mixture.notes.seq_len = 4
    with pytest.raises(ConfigError, match="not a per-source setting"):
        mixture.source_configs(cfg)
    single = make_cfg(tmp_path)
    single.mixture = ml_collections.ConfigDict({"code": {"name": "stdlib", "weight": 1.0}})
    with pytest.raises(ConfigError, match="at least two sources"):
        mixture.load(single)


@pytest.mark.parametrize("sampling", ["iid", "stratified"])
def test_a_mixture_of_two_text_corpora_trains_evaluates_per_source(
        tmp_path, make_cfg, stdlib_copy, sampling):
    """End to end through the pipeline: one tokenizer for both, i.i.d. rows by weight,
    validation chained over the sources (the trainer's eval hook is in tests/train)."""
    a = stdlib_copy(str(tmp_path / "a"))
    b = tmp_path / "b"
    b.mkdir()
    for i in range(8):
        (b / f"note{i}.txt").write_text(f"note {i}: " + "plain words here. " * (20 + i))
    cfg = make_cfg(tmp_path / "data", sampling=sampling, cache_workers=0)
    cfg.mixture = ml_collections.ConfigDict({
        "code": {"name": "text_files", "path": a, "weight": 3.0, "min_val_files": 2},
        "notes": {"name": "text_files", "path": str(b), "weight": 1.0, "min_val_files": 2}})
    corpus, tokenizer = pipeline.prepare(cfg)
    assert corpus.labels == ["code", "notes"] and corpus.weights["code"] == 0.75
    it = pipeline.make_iterator(cfg, corpus, tokenizer, "train")
    assert {s.sampling for s in it.streams.values()} == {sampling}
    batch = next(it)
    assert batch["tokens"].shape == (cfg.batch_size, cfg.seq_len)
    state = it.get_state()
    nxt = next(it)
    again = pipeline.make_iterator(cfg, corpus, tokenizer, "train")
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["tokens"], nxt["tokens"])
    val = list(pipeline.make_iterator(cfg, corpus, tokenizer, "validation"))
    per_source = [list(pipeline.make_iterator(corpus.configs[k], corpus.corpora[k], tokenizer,
                                              "validation")) for k in corpus.labels]
    assert len(val) == sum(len(v) for v in per_source) > 0
    with pytest.raises(ConfigError, match="sampling='iid'"):
        cfg.sampling = "packed"
        pipeline.make_iterator(cfg, corpus, tokenizer, "train")
