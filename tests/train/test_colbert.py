"""ColBERT trainer (kyx/train/colbert.py): mined docstring -> code pairs, query augmentation
and punctuation masks in the batches, init_from a pretraining run, ranking eval, and one
step on 8 devices equal to 1."""
import math

import jax
import numpy as np
import pytest

import kyx
from kyx.cli import main as cli_main
from kyx.data import retrieval
from kyx.errors import ConfigError
from kyx.metrics import read_metrics
from kyx.train import colbert_index as ci
from kyx.train import loop, registry

COLBERT = ["colbert.query_len=32", "data.records.max_eval=24"]


@pytest.fixture(scope="module")
def colbert_cfg(post_overrides, post_config):
    return lambda extra=(): post_config("colbert", post_overrides + COLBERT + list(extra))


def test_batches_augment_queries_and_mask_punctuation(colbert_cfg):
    trainer = registry.build(colbert_cfg())
    batch = next(trainer.train_iter)
    tok = trainer.tokenizer
    mask_id = tok.special_id("<|ph|>")
    q, d, m = batch["q_tokens"], batch["d_tokens"], batch["d_mask"]
    assert q.shape == (8, 32) and d.shape == (8, 64) and batch["weight"].sum() == 8
    assert (q[:, 0] == tok.bos_id).all() and (q[:, 1] == tok.special_id("<|user|>")).all()
    assert (q == mask_id).any()                       # short queries are padded with masks
    assert (d[:, 1] == tok.special_id("<|assistant|>")).all()
    seg = batch["d_segment_ids"]
    assert (m[seg == 0] == 0).all()                   # padding masked
    punct = [i for i in np.unique(d[seg > 0]) if tok.decode([int(i)]).strip() in ("(", ":")]
    assert punct, "documents of code hold '(' / ':' tokens"
    assert (m[np.isin(d, punct)] == 0).all()          # punctuation masked
    assert m[seg > 0].mean() > 0.3                    # ... and not the rest
    words = [i for i in np.unique(d[seg > 0]) if tok.decode([int(i)]).strip().isalpha()]
    assert (m[np.isin(d, words)] == 1).all()
    # the pairs: held-out documents are none of the train documents
    again = registry.build(colbert_cfg())
    np.testing.assert_array_equal(next(again.train_iter)["q_tokens"], q)  # deterministic


def test_held_out_pairs_are_distinct_from_train(colbert_cfg):
    from kyx.data.corpus import load_corpus

    cfg = colbert_cfg()
    pairs = retrieval.mine_pairs(load_corpus(cfg.data), cfg.data.records)
    train, val = pairs["train"], pairs["validation"]
    n = len(val.queries)     # the small corpus has few validation files
    assert 4 <= n <= 24 and len(set(val.documents)) == n and len(set(val.queries)) == n
    assert not set(val.documents) & set(train.documents)
    assert not set(val.queries) & set(train.queries)
    assert all(d.startswith("def ") or d.startswith("async def ") for d in val.documents)
    assert all('"""' not in d.split("\n", 1)[0] for d in val.documents)


@pytest.mark.slow
def test_colbert_from_pretrained_trains_ranks_and_retrieves(colbert_cfg, pretrained, tmp_path,
                                                           capsys):
    """Slow (~100 s CPU with its pretraining fixture): the loop (step + eval compiled on
    8 devices), then the index and `kyx retrieve` on the run."""
    cfg = colbert_cfg([f"init_from={pretrained}", "train.steps=2", "train.eval_every=2",
                       "checkpoint.every=2"])
    trainer = registry.build(cfg)
    start = trainer.models["encoder"].init()
    for a, b in zip(jax.tree.leaves(kyx.load(pretrained).params),
                    jax.tree.leaves(start["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert set(start) == {"backbone", "colbert_kernel"}
    assert start["colbert_kernel"].shape == (32, 128)
    loop.run(trainer, str(tmp_path))
    rows = read_metrics(tmp_path)
    last = [r for r in rows if "eval/mrr@10" in r][-1]
    assert last["eval/queries"] == len(trainer.eval_batches()[0]["weight"].nonzero()[0]) >= 4
    assert 0.0 <= last["eval/recall@1"] <= last["eval/mrr@10"] <= last["eval/recall@10"] <= 1
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    # the index path (numpy MaxSim over stored vectors) ranks as the jitted eval did
    retriever = ci.Retriever.load(str(tmp_path))
    pairs = ci.held_out_pairs(retriever)
    exact = ci.held_out_metrics(retriever, ci.build_index(retriever, pairs.documents, 0),
                                pairs.queries)
    for key in ("mrr@10", "recall@1", "recall@10"):
        assert exact[key] == pytest.approx(last[f"eval/{key}"], abs=1e-6), key
    capsys.readouterr()
    argv = ["retrieve", "--workdir", str(tmp_path), "--query", "Return the value", "--k", "3"]
    assert cli_main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert first[0].startswith("building the index") and len(first) == 4
    assert cli_main(argv) == 0                        # the saved index is reused
    assert capsys.readouterr().out.splitlines() == first[1:]
    with pytest.raises(ConfigError, match="not a colbert"):
        ci.Retriever.load(pretrained)


@pytest.mark.slow
def test_colbert_eight_devices_equal_one(colbert_cfg, eight_vs_one):
    """Slow (~30 s): compiles the step on 1 device and on the dp and fsdp meshes."""
    trainer = registry.build(colbert_cfg())
    batches = [next(trainer.train_iter)]
    (m1, _), _ = eight_vs_one(trainer, batches, presets=("dp", "fsdp"),
                              step_functions=("accuracy",))
    assert m1[0]["loss"] > 0
