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
