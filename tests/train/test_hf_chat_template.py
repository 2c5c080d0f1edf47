"""Post-training and Hugging Face chat: an HF model's own template drives SFT / DPO rows
(multi-turn records), and an SFT policy trained on multi-turn records exports so that
transformers chats with it exactly as kyx does."""
import json

import numpy as np
import pytest
import torch
import transformers

import kyx
from kyx.commands import convert
from kyx.data import records
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.data.templates import make_template
from kyx.train import loop, registry


def m(role, content):
    return {"role": role, "content": content}


def conversations(n):
    return [[m("system", "Answer in Python."), m("user", f"Add {i} numbers."),
             m("assistant", f"def add{i}(a, b):\n    return a + b"), m("user", "Now three."),
             m("assistant", f"def add{i}(a, b, c):\n    return a + b + c")] for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _hf_chat_model(path, llama3_tokenizer):
    """A tiny random Llama with the Llama-3-style tokenizer and template."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=0, eos_token_id=4, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return llama3_tokenizer(path)


def _segments(tokens, segment_ids):
    return [tokens[segment_ids == s].tolist() for s in np.unique(segment_ids) if s > 0]


def test_hf_model_template_drives_sft_and_dpo_rows(tmp_path, post_config, post_overrides,
                                                   llama3_tokenizer):
    hf_dir = _hf_chat_model(tmp_path / "hf", llama3_tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    convs = conversations(8)
    common = [f"init_from={hf_dir}", "data.records.source=jsonl", "data.seq_len=128",
              "model.max_seq_len=128"]
    sft_path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in convs])
    sft = registry.build(post_config("sft", post_overrides + common + [
        f"data.records.path={sft_path}"]))
    batch = next(sft.train_iter)
    want = {tuple(hf_tok.apply_chat_template(c, return_dict=False)) for c in convs}
    rows = [s for row in range(len(batch["tokens"]))
            for s in _segments(batch["tokens"][row], batch["segment_ids"][row])]
    assert rows and all(tuple(s) in want for s in rows)
    learned = hf_tok.decode(batch["targets"][0][batch["loss_mask"][0] > 0])
    assert learned.count("<|eot_id|>") == 2 * len(_segments(batch["tokens"][0],
                                                            batch["segment_ids"][0]))
    assert "Now three." not in learned and "return a + b + c" in learned
    pairs = [{"chosen": c, "rejected": c[:-1] + [m("assistant", "pass")]} for c in convs]
    dpo = registry.build(post_config("dpo", post_overrides + common + [
        f"data.records.path={write_jsonl(tmp_path / 'dpo.jsonl', pairs)}"]))
    batch = next(dpo.train_iter)
    for name in ("chosen", "rejected"):
        want = {tuple(hf_tok.apply_chat_template(p[name], return_dict=False)): p[name][-1]
                for p in pairs}
        for row in range(len(batch["weight"])):
            (seq,) = _segments(batch[f"{name}_tokens"][row], batch[f"{name}_segment_ids"][row])
            final = want[tuple(seq)]   # KeyError: not the HF template's rendering
            mask = batch[f"{name}_loss_mask"][row] * (1 - batch[f"{name}_format_mask"][row])
            assert hf_tok.decode(batch[f"{name}_targets"][row][mask > 0]) == final["content"]


@pytest.mark.slow  # ~26 s: the one end-to-end multi-turn SFT run (2 steps, ~19 s of it
# compiling), then the export and transformers' generate
def test_multi_turn_sft_policy_exports_with_chat_parity(tmp_path, post_config, post_overrides,
                                                        pretrained):
    convs = conversations(12)
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in convs])
    work, out = tmp_path / "sft", tmp_path / "exported"
    loop.run(registry.build(post_config("sft", post_overrides + [
        f"init_from={pretrained}", "data.records.source=jsonl", f"data.records.path={path}",
        "train.steps=2"])), str(work))
    convert.to_hf(str(work), str(out))
    gen = json.load(open(out / "generation_config.json"))
    tmpl = make_template(load_tokenizer(str(work)))
    assert gen["eos_token_id"] == [3, tmpl.stop_id]   # a chat policy also stops at <|eot|>
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    msgs = convs[0][:-1]
    system, history, (user,) = records.split(msgs)
    prompt = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    assert prompt == tmpl.prompt_ids(user["content"], system, history)
    full = tmpl.encode(user["content"], convs[0][-1]["content"], system, history=history,
                       learn_history=True)
    assert hf_tok.apply_chat_template(convs[0], return_dict=False) == full.tokens.tolist()
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval().float()
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8,
                             eos_token_id=tmpl.stop_id)[0, len(prompt):].tolist()
    ref = ref[:ref.index(tmpl.stop_id)] if tmpl.stop_id in ref else ref
    assert kyx.load(str(work)).generate(msgs, chat=True, temperature=0.0, max_tokens=8) == \
        hf_tok.decode(ref, skip_special_tokens=True)
