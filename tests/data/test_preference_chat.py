"""Chat template: response-only and formatting-token masks on hand-checked examples."""
import numpy as np

from kyx.data import chat
from kyx.data.tokenizer import CHAT_TOKENS, PLACEHOLDER
from kyx.data.preference import SftElements, Stats

PAD, BOS, EOS = 0, 2, 3
SYS, USR, AST, EOT = 4, 5, 6, 7


class ChatCharTokenizer:
    """Reserved chat ids 4..7; character c -> ord(c) + 8."""

    vocab_size, pad_id, bos_id, eos_id = 1024, PAD, BOS, EOS
    SPECIAL = {"<|system|>": SYS, "<|user|>": USR, "<|assistant|>": AST, "<|eot|>": EOT}

    def encode(self, text):
        return [ord(c) + 8 for c in text]

    def special_id(self, piece):
        return self.SPECIAL.get(piece)


def c(ch):
    return ord(ch) + 8


def test_masks_with_reserved_tokens_hand_checked():
    tmpl = chat.ChatTemplate(ChatCharTokenizer())
    assert tmpl.reserved and tmpl.stop_id == EOT
    enc = tmpl.encode("hi", "ok")
    assert enc.tokens.tolist() == [BOS, USR, c("h"), c("i"), EOT, AST, c("o"), c("k"), EOT]
    assert enc.response.astype(int).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert enc.fmt.astype(int).tolist() == [1, 1, 0, 0, 1, 1, 0, 0, 1]
    t = chat.targets(enc, PAD)
    assert t["targets"].tolist() == [USR, c("h"), c("i"), EOT, AST, c("o"), c("k"), EOT, PAD]
    assert t["loss_mask"].astype(int).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert t["format_mask"].astype(int).tolist() == [1, 0, 0, 1, 1, 0, 0, 1, 0]
    # preference loss with formatting tokens masked (Llama 3): response content only
    pref = t["loss_mask"] * (1 - t["format_mask"])
    assert pref.astype(int).tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert tmpl.prompt_ids("hi") == [BOS, USR, c("h"), c("i"), EOT, AST]


def test_system_turn():
    enc = chat.ChatTemplate(ChatCharTokenizer()).encode("q", "a", system="S")
    assert enc.tokens.tolist() == [BOS, SYS, c("S"), EOT, USR, c("q"), EOT, AST, c("a"), EOT]
    assert enc.fmt.astype(int).tolist() == [1, 1, 0, 1, 1, 0, 1, 1, 0, 1]


def test_fallback_without_reserved_tokens(char_tokenizer):
    """A tokenizer without chat pieces: headers are encoded text, end of turn is EOS."""
    tmpl = chat.ChatTemplate(char_tokenizer)
    assert not tmpl.reserved and tmpl.stop_id == EOS
    enc = tmpl.encode("hi", "ok")
    user, asst = char_tokenizer.encode("<|user|>"), char_tokenizer.encode("<|assistant|>")
    want = [BOS, *user, *char_tokenizer.encode("hi"), EOS, *asst,
            *char_tokenizer.encode("ok"), EOS]
    assert enc.tokens.tolist() == want
    n_pre = 1 + len(user) + 2 + 1 + len(asst)
    assert enc.response.tolist() == [False] * n_pre + [True] * 3
    assert enc.fmt.tolist() == ([True] * (1 + len(user)) + [False] * 2 + [True] * (1 + len(asst))
                                + [False, False, True])


def test_truncation_cuts_prompt_text_from_the_left_then_responses():
    tmpl = chat.ChatTemplate(ChatCharTokenizer())
    long_a, short_b = tmpl.encode_many("abcdefgh", ["xyz", "x"], max_len=10)
    # prompt markers are kept; prompt text is cut from the left to fit the longer response
    assert long_a.truncated and short_b.truncated
    assert long_a.tokens.tolist() == [BOS, USR, c("g"), c("h"), EOT, AST, c("x"), c("y"),
                                      c("z"), EOT]
    assert short_b.tokens.tolist()[:6] == long_a.tokens.tolist()[:6]
    # a response that cannot fit is cut from the right (losing its end of turn)
    (cut,) = tmpl.encode_many("ab", ["0123456789"], max_len=10)
    assert len(cut.tokens) == 10 and cut.tokens[-1] != EOT and cut.response[-1]


def test_negative_mask_starts_at_first_divergence_and_skips_formatting():
    tok = ChatCharTokenizer()
    rec = {"prompt": "p", "response": "ab", "negatives": ["ac"], "system": ""}
    (pos,) = SftElements(chat.ChatTemplate(tok), 64, False, 0, "", Stats()).flat_map(rec)
    (neg,) = SftElements(chat.ChatTemplate(tok), 64, True, 0, "", Stats()).flat_map(rec)
    # tokens: BOS USR p EOT AST a {b|c} EOT; divergence at index 6
    assert pos["mask"].astype(int).tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert neg["mask"].astype(int).tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert neg["targets"][5] == c("c")
    assert pos["neg_index"].max() == 0 and set(neg["neg_index"].tolist()) == {1}
    assert chat.first_divergence(np.array([1, 2, 3]), np.array([1, 2])) == 2


def test_trained_tokenizers_reserve_chat_tokens(small_setup):
    _, _, tok = small_setup
    assert [tok.special_id(m) for m in CHAT_TOKENS] == [SYS, USR, AST, EOT]
    assert tok.special_id(PLACEHOLDER) == 8     # LUD's placeholder (kyx/model/lud.py)
    assert tok.id_to_piece(9) == "<0x00>"  # byte pieces follow the reserved ids
    assert not {SYS, USR, AST, EOT, 8} & set(tok.encode("<|user|> hi <|eot|> <|ph|>"))
    tmpl = chat.ChatTemplate(tok)
    assert tmpl.reserved and tmpl.prompt_ids("x")[:2] == [tok.bos_id, USR]
