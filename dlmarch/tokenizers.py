"""The one tokenizer loader: a model directory's tokenizer, from local files, never its remote code.

Dream ships `DreamTokenizer` as remote code (tokenization_dream.py, "based on Qwen's
implementations"): Qwen2's byte-level BPE over the same vocab.json / merges.txt and added tokens, so
transformers' Qwen2Tokenizer reads it; AutoTokenizer would demand trust_remote_code. Every other
directory goes through AutoTokenizer with trust_remote_code off.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DlmarchError

# End-of-turn tokens of the chat templates we meet (LLaDA/Llama 3, our character tokenizer, Qwen2/Dream).
END_OF_TURN = ("<|eot_id|>", "<|eot|>", "<|im_end|>")


def dream_tokenizer(model_dir):
    """The tokenizer of a directory that declares Dream's remote-code tokenizer, or None."""
    path = Path(model_dir) / "tokenizer_config.json"
    try:
        declared = json.loads(path.read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    if declared != "DreamTokenizer":
        return None
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(model_dir, local_files_only=True)


def load_tokenizer(model_dir, padding_side: str | None = None):
    """The tokenizer of `model_dir` (local files only); DlmarchError in one line when it cannot be read."""
    from transformers import AutoTokenizer

    try:
        tokenizer = dream_tokenizer(model_dir)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises many types; the user needs one line
        raise DlmarchError(f"{model_dir}: cannot load its tokenizer ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if padding_side:
        tokenizer.padding_side = padding_side
    return tokenizer


def end_of_turn_id(tokenizer) -> int | None:
    """The id of the chat template's end-of-turn token when the vocabulary has one of END_OF_TURN."""
    vocab = tokenizer.get_vocab()
    for t in END_OF_TURN:
        if t in vocab:
            return tokenizer.convert_tokens_to_ids(t)
    return None


__all__ = ["load_tokenizer", "dream_tokenizer", "end_of_turn_id", "END_OF_TURN"]
