"""JRT prompting (kyx/data/jrt.py): exact prompt strings, template checks, `kyx sample
--prompts FILE --jrt` input records and its errors (no model is loaded)."""
import json

import pytest

from kyx.cli import main as cli_main
from kyx.data.jrt import fda_prompt, jrt_prompt
from kyx.data.prompt_file import read_prompt_file
from kyx.errors import ConfigError, DataError


def test_jrt_prompt_exact_strings():
    assert jrt_prompt("A is 1. B is 2.", "B is") == "A is 1. B is 2.\nA is 1. B is 2.\nB is"
    assert jrt_prompt("ctx", "q?", template="{context} {context} {context}\nQ: {question}") \
        == "ctx ctx ctx\nQ: q?"
    # braces inside the texts are not template fields
    assert jrt_prompt("{x}", "{question}") == "{x}\n{x}\n{question}"


def test_fda_template_as_the_reference():
    doc = "Name: Acme Pump. The device name is Acme Pump.\n"
    assert fda_prompt(doc, "device name") == (
        "Information about Device name. Name: Acme Pump. The device name is Acme Pump.\n"
        "Name: Acme Pump. The device name is Acme Pump. Device name:")
    # a trailing "key:" (any case) is cut, then the edge period / newline, then "." added
    assert fda_prompt("Made by Foo.\nDevice Name:", "device name") == (
        "Information about Device name. Made by Foo.\nMade by Foo. Device name:")


@pytest.mark.parametrize("template, says", [
    ("{context}\n{context}", "found ['context']"),
    ("{context} {question} {answer}", "found ['answer', 'context', 'question']"),
    ("{context", "not a format string"),
])
def test_bad_templates_are_config_errors(template, says):
    with pytest.raises(ConfigError, match="JRT template") as e:
        jrt_prompt("c", "q", template)
    assert says in str(e.value)


def test_prompt_file_jrt_records(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"context": "k1 v1 k2 v2", "question": "k2", "answer": "v2"})
                    + "\n\n" + json.dumps({"context": "x", "question": "y"}) + "\n")
    got = read_prompt_file(str(path), chat=False, jrt_template="{context}\n{context}\n{question}")
    assert got == ["k1 v1 k2 v2\nk1 v1 k2 v2\nk2", "x\nx\ny"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "x", "question": "y"}) + "\n"
                   + json.dumps({"prompt": "hello"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: JRT prompting \(--jrt\) needs a JSON "
                                        r"object with text fields \"context\" and \"question\""):
        read_prompt_file(str(bad), jrt_template="{context}{question}")
    bad.write_text(json.dumps({"context": ["x"], "question": "y"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1: JRT prompting"):
        read_prompt_file(str(bad), jrt_template="{context}{question}")
    txt = tmp_path / "p.txt"
    txt.write_text("context and question\n")
    with pytest.raises(DataError, match="not plain-text lines"):
        read_prompt_file(str(txt), jrt_template="{context}{question}")


def test_cli_jrt_errors_without_traceback(tmp_path, capsys):
    work = str(tmp_path / "no_such_run")   # every error below comes before loading a model
    assert cli_main(["sample", "--workdir", work, "--prompt", "hello", "--jrt"]) == 2
    assert "not a plain-text --prompt" in capsys.readouterr().err
    good = tmp_path / "qa.jsonl"
    good.write_text(json.dumps({"context": "c", "question": "q"}) + "\n")
    out = str(tmp_path / "out.jsonl")
    assert cli_main(["sample", "--workdir", work, "--prompts", str(good), "--out", out,
                     "--jrt-template", "{context}{question}"]) == 2
    assert "--jrt-template goes with --jrt" in capsys.readouterr().err
    assert cli_main(["sample", "--workdir", work, "--prompts", str(good), "--out", out,
                     "--jrt", "--jrt-template", "{question}"]) == 2
    assert "must use exactly the fields" in capsys.readouterr().err
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "hello"}) + "\n")
    assert cli_main(["sample", "--workdir", work, "--prompts", str(plain), "--out", out,
                     "--jrt"]) == 2
    assert "plain.jsonl:1: JRT prompting (--jrt) needs" in capsys.readouterr().err
