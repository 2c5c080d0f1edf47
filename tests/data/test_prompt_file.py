"""Prompts files for `kyx sample --prompts`: JSONL records or text lines; a malformed line
is an error naming the file and line, from the CLI an exit code without a traceback."""
import json

import pytest

from kyx.cli import main as cli_main
from kyx.data.prompt_file import read_prompt_file
from kyx.errors import DataError

CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Write add."}]


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_jsonl_records_and_text_lines(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "def f("}), "",
        json.dumps({"messages": CONVERSATION}),
        json.dumps({"prompt": "hi", "system": "Be brief."}),
        json.dumps({"messages": [{"role": "user", "content": "only a user turn"}]})])
    assert read_prompt_file(path) == [
        "def f(", CONVERSATION,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "only a user turn"}]]
    text = _write(tmp_path / "p.txt", ["def ", "", "  import os", "{\"not\": json}"])
    assert read_prompt_file(text) == ["def ", "  import os", "{\"not\": json}"]


@pytest.mark.parametrize("line, reason", [
    ("{\"prompt\": ", "invalid_json"),
    ("{\"text\": \"x\"}", "missing_prompt"),
    ("{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}", "roles_not_alternating"),
    ("[1, 2]", "not_an_object"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "ok"}), "", line])
    with pytest.raises(DataError, match=rf"p\.jsonl:3: {reason}"):
        read_prompt_file(path)


def test_conversation_needs_chat_and_empty_file_is_an_error(tmp_path):
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a"}),
                                         json.dumps({"messages": CONVERSATION})])
    with pytest.raises(DataError, match=r"p\.jsonl:2: .*--chat"):
        read_prompt_file(path, chat=False)
    with pytest.raises(DataError, match="holds no prompt"):
        read_prompt_file(_write(tmp_path / "e.txt", ["", "  "]))
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not UTF-8"):
        read_prompt_file(str(tmp_path / "bad.txt"))


def test_cli_reports_malformed_line_without_traceback(tmp_path, capsys):
    """The prompts are read before any model is loaded: a bad file fails fast (exit 2)."""
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "ok"}), "{oops"])
    code = cli_main(["sample", "--workdir", str(tmp_path / "no_model"), "--prompts", path,
                     "--out", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "p.jsonl:2: invalid_json" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()
    assert cli_main(["sample", "--workdir", "x", "--prompts", path]) == 2
    assert "--prompts needs --out" in capsys.readouterr().err
