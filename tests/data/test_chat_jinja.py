"""A model's own Jinja chat template (Llama 3 style; the tokenizer.json is made by the
``llama3_tokenizer`` fixture, tests/conftest.py): ids equal
transformers' apply_chat_template, masks are exact per turn, errors are clear."""
import numpy as np
import pytest
import transformers

from kyx.data import chat, records
from kyx.data.chat_jinja import JinjaTemplate
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.data.preference import PairExample, SftElements, Stats
from kyx.data.templates import make_template
from kyx.errors import ConfigError, DataError

MULTI = [{"role": "system", "content": "Answer in Python."},
         {"role": "user", "content": "Add two numbers."},
         {"role": "assistant", "content": "  def add(a, b):\n    return a + b  "},
         {"role": "user", "content": "Now three."},
         {"role": "assistant", "content": "def add3(a, b, c):\n    return a + b + c"}]


@pytest.fixture
def llama3_dir(tmp_path, llama3_tokenizer):
    return llama3_tokenizer(tmp_path / "llama3")


def _split(msgs):
    system, history, (user,) = records.split(msgs)
    return user["content"], system, history


def _runs(flags):
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))


@pytest.mark.parametrize("n", [2, 5], ids=["single", "multi_turn"])
def test_ids_match_transformers_and_masks_cover_each_assistant_turn(llama3_dir, n):
    tok = load_tokenizer(str(llama3_dir))
    tmpl = make_template(tok)   # auto: the model's own template
    assert isinstance(tmpl, JinjaTemplate) and tmpl.stop_id == tok.encode("<|eot_id|>")[0]
    msgs = MULTI[-n:] if n == 2 else MULTI
    hf = transformers.AutoTokenizer.from_pretrained(llama3_dir)
    prompt, system, history = _split(msgs[:-1])
    enc = tmpl.encode(prompt, msgs[-1]["content"], system, history=history, learn_history=True)
    assert enc.tokens.tolist() == hf.apply_chat_template(msgs, return_dict=False)
    assert tmpl.prompt_ids(prompt, system, history) == hf.apply_chat_template(
        msgs[:-1], add_generation_prompt=True, return_dict=False)
    # SFT learns every assistant turn: its trimmed text and its <|eot_id|>, nothing else
    learned = [tok.decode(enc.tokens[a:b]) for a, b in _runs(enc.response)]
    assert learned == [m["content"].strip() + "<|eot_id|>" for m in msgs
                       if m["role"] == "assistant"]
    eot = enc.tokens == tmpl.stop_id
    assert (enc.fmt[enc.response] == eot[enc.response]).all()   # formatting: the eot only
    assert enc.fmt[eot].all() and enc.fmt[enc.tokens == tok.encode("<|start_header_id|>")[0]].all()
    # pairs / KTO: earlier assistant turns are context, only the final turn is learned
    final = tmpl.encode(prompt, msgs[-1]["content"], system, history=history)
    assert final.tokens.tolist() == enc.tokens.tolist()
    assert [tok.decode(final.tokens[a:b]) for a, b in _runs(final.response)] == learned[-1:]


def test_data_pipelines_use_the_template_on_multi_turn_records(llama3_dir):
    tmpl = make_template(load_tokenizer(str(llama3_dir)))
    sft, _ = records.normalize("sft", {"messages": MULTI, "negatives": ["pass"]})
    (pos,) = SftElements(tmpl, 256, False, 0, "", Stats()).flat_map(sft)
    (neg,) = SftElements(tmpl, 256, True, 0, "", Stats()).flat_map(sft)
    assert len(_runs(pos["mask"] > 0)) == 2               # both assistant turns
    assert len(_runs(neg["mask"] > 0)) == 1               # the negative final turn only
    pair, _ = records.normalize("preference", {
        "chosen": MULTI, "rejected": MULTI[:-1] + [{"role": "assistant", "content": "pass"}]})
    assert pair["history"] == MULTI[1:3] and pair["system"] == MULTI[0]["content"]
    row = PairExample(tmpl, "preference", 256, "", Stats()).map({**pair, "index": 0})
    for name, text in (("chosen", MULTI[-1]["content"]), ("rejected", "pass")):
        mask = row[f"{name}_loss_mask"] * (1 - row[f"{name}_format_mask"])
        targets = row[f"{name}_targets"][mask > 0]
        assert tmpl.tokenizer.decode(targets) == text


def test_template_errors_are_clear(tmp_path, llama3_tokenizer):
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                 "{{ raise_exception('System role not supported') }}{% endif %}"
                 "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    tmpl = make_template(load_tokenizer(str(llama3_tokenizer(tmp_path / "a", no_system))))
    assert len(tmpl.prompt_ids("hi")) > 0
    with pytest.raises(DataError, match="rejects a conversation of turns system -> user.*"
                                        "System role not supported"):
        tmpl.prompt_ids("hi", system="be brief")
    # the last user turn rendered differently from earlier ones: no prefix property
    last_special = ("{% for m in messages %}{% if loop.last %}LAST {% endif %}"
                    "{{ m['content'] + '<|eot_id|>' }}{% endfor %}")
    with pytest.raises(DataError, match="renders the turns before the last"):
        make_template(load_tokenizer(str(llama3_tokenizer(tmp_path / "b", last_special))))
    bad = llama3_tokenizer(tmp_path / "c", "{% for m in messages %}")
    with pytest.raises(ConfigError, match="not valid Jinja"):
        make_template(load_tokenizer(str(bad)))


def test_generation_tags_and_a_template_that_rewrites_text_by_content(tmp_path,
                                                                      llama3_tokenizer):
    # {% generation %} (transformers' assistant-mask markers) renders its body; a turn
    # whose markup depends on its text is learned whole, with no formatting flagged
    template = ("{% for m in messages %}{{ m['role'] + ':' }}"
                "{% if m['role'] == 'assistant' %}{% generation %}"
                "{{ m['content'] }}{% if 'def' in m['content'] %}<|end_of_text|>"
                "{% else %}<|eot_id|>{% endif %}{% endgeneration %}"
                "{% else %}{{ m['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    tok = load_tokenizer(str(llama3_tokenizer(tmp_path / "g", template)))
    tmpl = make_template(tok)
    assert tmpl.stop_id == tok.encode("<|eot_id|>")[0]   # the markup after a plain turn
    plain = tmpl.encode("q", "ok")
    assert tok.decode(plain.tokens[plain.response]) == "ok<|eot_id|>"
    assert tok.decode(plain.tokens[plain.fmt & plain.response]) == "<|eot_id|>"
    code = tmpl.encode("q", "def f(): pass")
    assert tok.decode(code.tokens[code.response]) == "def f(): pass<|end_of_text|>"
    assert not (code.fmt & code.response).any()


def test_kyx_template_is_chosen_without_a_model_template(char_tokenizer):
    assert isinstance(make_template(char_tokenizer), chat.ChatTemplate)
    assert isinstance(make_template(char_tokenizer, "kyx"), chat.ChatTemplate)
    with pytest.raises(ConfigError, match="needs the model's own chat template"):
        make_template(char_tokenizer, "hf")
    with pytest.raises(ConfigError, match="unknown data.records.chat_template 'jinja'"):
        make_template(char_tokenizer, "jinja")
