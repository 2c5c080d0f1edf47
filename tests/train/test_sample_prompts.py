"""`kyx sample --prompts FILE --out FILE.jsonl`: one row per prompt, written per batch;
a re-run resumes after a kill (torn last line included) to the uninterrupted output and
refuses an output made with other settings; `--int8` and `kyx.load(quantize="int8")`."""
import json

import numpy as np

import kyx
from kyx.cli import main as cli_main
from kyx.model.quant import Int8Rows


def test_prompts_to_jsonl_resume_and_refusal(pretrained, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n"
                               for p in ["def ", "import os", "class A", "x = ", "return"]))
    out = tmp_path / "out.jsonl"
    argv = ["sample", "--workdir", pretrained, "--prompts", str(prompts), "--out", str(out),
            "--batch-size", "2", "--max-tokens", "5", "--temperature", "1.0"]
    assert cli_main(argv) == 0
    full = out.read_text()
    rows = [json.loads(line) for line in full.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["prompt"] for r in rows][:2] == ["def ", "import os"]
    assert all(r["prompt_tokens"] >= 2 and 0 <= r["completion_tokens"] <= 5 for r in rows)
    assert all(r["stop"] == ("length" if r["completion_tokens"] == 5 else "eos") for r in rows)
    assert rows[0]["settings"]["temperature"] == 1.0 and rows[0]["settings"]["batch_size"] == 2
    assert rows[0]["settings"]["step"] == 4 and rows[0]["settings"]["int8"] is False

    # killed while writing the third row (in batch 2): that batch is sampled again
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:7])
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "after 2 written before" in capsys.readouterr().out
    assert out.read_text() == full
    assert cli_main(argv) == 0
    assert "already written" in capsys.readouterr().out and out.read_text() == full

    other = argv[:-1] + ["0.5"]
    assert cli_main(other) == 2
    err = capsys.readouterr().err
    assert "row 1 was made with other settings (temperature: 1.0 then, 0.5 now)" in err
    assert out.read_text() == full


def test_int8_load_and_sample(pretrained, tmp_path, capsys):
    f32 = kyx.load(pretrained)
    q = kyx.load(pretrained, quantize="int8")
    assert q.quantized == "int8" and isinstance(q.params["head"]["kernel"], Int8Rows)
    tokens = np.arange(2, 14)[None]
    ref, got = f32.logits(tokens), q.logits(tokens)
    assert 0 < np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    prompts = tmp_path / "p.txt"
    prompts.write_text("def \nimport os\n")
    out = tmp_path / "q.jsonl"
    assert cli_main(["sample", "--workdir", pretrained, "--prompts", str(prompts), "--out",
                     str(out), "--int8", "--max-tokens", "4", "--temperature", "0"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["settings"]["int8"] for r in rows)
    assert [r["completion"] for r in rows] == q.generate(["def ", "import os"], max_tokens=4,
                                                         temperature=0, batch_size=16)
