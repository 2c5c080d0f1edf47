"""`kyx data prepare|stats` on a small text_files corpus."""
import json

from kyx import cli


def test_data_prepare_then_stats(tmp_path, stdlib_copy, capsys):
    root = stdlib_copy(str(tmp_path / "texts"))
    args = ["--config", "configs/pretrain.py:tiny", "--config.data.name=text_files",
            f"--config.data.path={root}", f"--config.data.data_dir={tmp_path / 'data'}",
            "--config.data.tokenizer.vocab_size=512", "--config.model.vocab_size=512"]
    assert cli.main(["data", "prepare", *args]) == 0
    assert "prepared" in capsys.readouterr().out
    assert cli.main(["data", "stats", *args]) == 0
    out = capsys.readouterr().out  # log lines, then the JSON object
    stats = json.loads(out[out.index("{\n"):])
    assert stats["files_kept"] == 12 and stats["dedup_exact"] == 0
    assert stats["train_tokens"] > 10_000 and 0.1 < stats["tokens_per_byte"] < 1


def test_data_stats_of_a_mixture_reports_each_source(tmp_path, stdlib_copy, capsys):
    root = stdlib_copy(str(tmp_path / "texts"))
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(6):
        (notes / f"n{i}.txt").write_text(f"note {i}: " + "plain words. " * (30 + i))
    mix = {"code": {"name": "text_files", "path": root, "weight": 3},
           "notes": {"name": "text_files", "path": str(notes), "weight": 1}}
    args = ["--config", "configs/pretrain.py:tiny", f"--config.data.mixture={json.dumps(mix)}",
            f"--config.data.data_dir={tmp_path / 'data'}",
            "--config.data.tokenizer.vocab_size=512", "--config.model.vocab_size=512"]
    assert cli.main(["data", "stats", *args]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{\n"):])
    assert sorted(stats) == ["code", "notes"]
    assert stats["code"]["weight"] == 0.75 and stats["notes"]["files_kept"] == 6
    assert stats["code"]["train_tokens"] > 10 * stats["notes"]["train_tokens"] > 0
