"""A small character-level tokenizer with special tokens and a chat template, for the demo and tests.

Real runs use the tokenizer that ships with the checkpoint; this one lets a fresh machine build a
model end to end without downloading anything.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "mask_token": "<|mask|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|eot|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DEFAULT_CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer(chars: str = DEFAULT_CHARS, pad_to: int | None = None, words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """One token per character of `chars` (others map to <|unk|>), the special tokens above, and
    a chat template. `words` become single tokens that decode as text (e.g. "<answer>"); `pad_to`
    rounds the vocabulary up with unused tokens (e.g. to a multiple of 8)."""
    vocab: dict[str, int] = {}
    for tok in ["<|unk|>", *SPECIALS.values(), *ROLE_TOKENS, *words]:
        vocab[tok] = len(vocab)
    for ch in dict.fromkeys(chars):
        vocab.setdefault(ch, len(vocab))
    if pad_to:
        while len(vocab) % pad_to:
            vocab[f"<|unused{len(vocab)}|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|unk|>", additional_special_tokens=ROLE_TOKENS,
                                   **SPECIALS)
    if words:
        fast.add_tokens(list(words))  # matched before the per-character split; not special: decoded as text
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
