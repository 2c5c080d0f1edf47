"""HF tokenizers: tokenizer.json through `tokenizers`, ids from config, chat template kept."""
import json

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

from kyx.data.hf_tokenizer import JsonTokenizer, load_tokenizer


def test_tokenizer_json_round_trip_and_special_ids(tmp_path):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n"] * 20
    tok.train_from_iterator(text, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    json.dump({"model_type": "qwen2", "bos_token_id": 1, "eos_token_id": [2, 0]},
              open(tmp_path / "config.json", "w"))
    json.dump({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
              open(tmp_path / "tokenizer_config.json", "w"))
    loaded = load_tokenizer(str(tmp_path))
    assert isinstance(loaded, JsonTokenizer)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (1, 2, 2)
    assert loaded.vocab_size == tok.get_vocab_size()
    sample = "def mul(x, y):\n\treturn x * y  # 42\n"
    ids = loaded.encode(sample)
    assert loaded.decode(ids) == sample
    assert loaded.encode_batch([sample, "pass"])[0] == ids
    assert "messages" in loaded.chat_template


def test_template_files_special_tokens_and_save_tokenizer(tmp_path):
    """chat_template.jinja (transformers 5) wins over tokenizer_config.json; a list of
    named templates gives 'default'; token texts come from the config; save_tokenizer
    copies what a workdir needs to give the same tokens and template."""
    from kyx.data.hf_tokenizer import has_tokenizer, read_chat_template, save_tokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    json.dump({"bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>",
               "pad_token": None,
               "chat_template": [{"name": "tool_use", "template": "T"},
                                 {"name": "default", "template": "D"}]},
              open(tmp_path / "tokenizer_config.json", "w"))
    assert read_chat_template(str(tmp_path)) == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.chat_template == "J"
    assert loaded.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    assert loaded.special_ids() == {"<unk>": 0, "<s>": 1, "</s>": 2}
    work = tmp_path / "work"
    work.mkdir()
    assert not has_tokenizer(str(work))
    assert set(save_tokenizer(loaded, str(work))) == {"tokenizer.json", "tokenizer_config.json",
                                                      "chat_template.jinja"}
    again = load_tokenizer(str(work))
    assert again.chat_template == "J" and again.encode("<s>") == [1]
