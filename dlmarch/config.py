"""Model configurations: one dataclass per family.

Every family shares `TransformerConfig` (the fields our transformer needs) and adds how it reads and
writes its own Hugging Face `config.json` field names. `to_dict`/`from_dict` give the native form,
which names the family so that a native checkpoint knows what it holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .errors import ConfigError

ATTN_BACKENDS = ("auto", "sdpa", "flex", "flash")
# More layers than any published model of these families (Llama-3.1-405B has 126) by a wide margin;
# a config asking for more is a typo, and building it would stall before any other check.
MAX_LAYERS = 1024


# --- value checks shared by the HF readers and the dataclasses ---------------------------------------------


def _positive_int(value, name: str) -> int:
    """JSON integers only: 96.7 or "96" are refused rather than truncated or parsed."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, found {value!r}")
    return value


def _number(value, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number, found {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be positive, found {value!r}")
    return float(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, found {value!r}")
    return value


def _check_rope_scaling(scaling, name: str = "rope_scaling") -> None:
    """The fields each supported rope type reads (dlmarch.layers), present and sensible."""
    if not isinstance(scaling, dict):
        raise ConfigError(f"{name} must be an object, found {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")
    needed = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}[kind]
    for key in needed:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{kind} rope scaling needs a positive {key!r}, found {value!r}"
                              + ("" if kind == "linear" else f" (it needs {', '.join(needed)})"))
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ConfigError(f"llama3 rope scaling needs high_freq_factor > low_freq_factor, found "
                          f"{scaling['high_freq_factor']} and {scaling['low_freq_factor']}")


@dataclass
class TransformerConfig:
    """What one pre-norm RMSNorm/RoPE/SwiGLU transformer needs.

    `vocab_size` is the number of embedding rows (= logits width); `head_dim` defaults to
    hidden_size // num_heads. `hf_extra` keeps the fields of an imported HF config.json that we do
    not model, so that exporting writes them back unchanged.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int = 0
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Attention backend: 'auto' | 'sdpa' | 'flex' | 'flash' (see dlmarch.masks).
    attn_backend: str = "auto"
    # Apply the rotation in fp32 and cast back (LLaDA), or in the activation dtype with cos/sin cast
    # to it (transformers' Llama/Qwen2). Identical in fp32; this keeps bf16 faithful to each reference.
    rope_in_fp32: bool = False
    hf_extra: dict = field(default_factory=dict, repr=False, compare=False)

    family: ClassVar[str] = ""
    causal: ClassVar[bool] = True

    def __post_init__(self):
        self._check_values()
        if not self.head_dim:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, found {self.head_dim}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ConfigError(f"attn_backend must be one of {ATTN_BACKENDS}, found {self.attn_backend!r}")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)
            if self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default")) == "default":
                self.rope_scaling = None

    def _check_values(self) -> None:
        """Types and ranges of every field, before anything divides by them or builds from them."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings"):
            _positive_int(getattr(self, name), name)
        if self.num_layers > MAX_LAYERS:
            raise ConfigError(f"num_layers {self.num_layers} is more than {MAX_LAYERS}; is the config right?")
        if self.head_dim != 0:
            _positive_int(self.head_dim, "head_dim")
        self.rope_theta = _number(self.rope_theta, "rope_theta", positive=True)
        self.rms_norm_eps = _number(self.rms_norm_eps, "rms_norm_eps", positive=True)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                _flag(value, f.name)
            # Token ids index the embedding; pad_token_id is exempt because HF configs write -1 for
            # "none" and nothing here embeds it.
            elif f.name.endswith("_token_id") and f.name != "pad_token_id" and value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                    raise ConfigError(f"{f.name} {value!r} is outside the vocabulary of {self.vocab_size}")
        if not isinstance(self.attn_backend, str):
            raise ConfigError(f"attn_backend must be one of {ATTN_BACKENDS}, found {self.attn_backend!r}")
        if not isinstance(self.hf_extra, dict):
            raise ConfigError(f"hf_extra must be an object, found {self.hf_extra!r}")

    # --- sizes ---------------------------------------------------------------------------------
    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count of the model this config builds."""
        h, hd, v = self.hidden_size, self.head_dim, self.vocab_size
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h
        per_layer += (q + 2 * kv) * self.qkv_bias + h * self.out_bias
        per_layer += (2 * self.intermediate_size + h) * self.mlp_bias
        n = self.num_layers * per_layer + h  # + final norm
        head = 0 if self.tie_word_embeddings else v * h
        return n + head + (v * h if include_embedding else 0)

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Matmul FLOPs per token (nanoGPT/PaLM accounting).

        Forward: 2 FLOPs per multiply-accumulate over every weight matrix (the embedding lookup is
        free; the LM head is counted) plus the attention scores and the weighted sum,
        4 * layers * seq_len * heads * head_dim. Attention is counted over the full sequence for
        bidirectional models and over half of it for causal ones. Training = 3x forward.
        """
        norms = (2 * self.num_layers + 1) * self.hidden_size
        biases = self.num_layers * ((self.num_heads + 2 * self.num_kv_heads) * self.head_dim * self.qkv_bias
                                    + self.hidden_size * self.out_bias
                                    + (2 * self.intermediate_size + self.hidden_size) * self.mlp_bias)
        weights = self.num_params(include_embedding=False) - norms - biases
        attn_ctx = seq_len / 2 if self.causal else seq_len
        forward = 2 * weights + 4 * self.num_layers * attn_ctx * self.num_heads * self.head_dim
        return float(3 * forward if training else forward)

    # --- native form -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["family"] = self.family
        return d

    @staticmethod
    def from_dict(d: dict) -> "TransformerConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a native config must be an object of fields, found {type(d).__name__}")
        d = dict(d)
        family = d.pop("family", None)
        cls = CONFIG_CLASSES.get(family)
        if cls is None:
            raise ConfigError(f"unknown model family {family!r} (known: {sorted(CONFIG_CLASSES)})")
        return strict_dataclass(cls, d, f"{family} config field(s)")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TransformerConfig":
        """The config of a checkpoint directory, native or HF."""
        where = Path(path) / "config.json"
        raw = read_json(where)
        cfg = native_config(raw, where) if raw.get("format") == "dlmarch" else config_from_hf(raw, str(where))
        if cls is not TransformerConfig and not isinstance(cfg, cls):
            raise ConfigError(f"{path} holds a {cfg.family} config, not a {cls.__name__}")
        return cfg

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)

    # --- Hugging Face form: each family overrides ---------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict) -> "TransformerConfig":
        raise NotImplementedError

    def to_hf(self) -> dict:
        raise NotImplementedError


def _need(hf: dict, key: str, family: str):
    if key not in hf or hf[key] is None:
        raise ConfigError(f"{family} config.json lacks the field {key!r}")
    return hf[key]


def _expect(hf: dict, key: str, allowed, family: str):
    """Refuse a config whose field asks for something our model does not implement."""
    if key in hf and hf[key] not in allowed:
        raise ConfigError(f"{family} config.json: {key}={hf[key]!r} is not supported (supported: {allowed})")


def _hf_rope(hf: dict) -> tuple[float, dict | None]:
    """(theta, scaling) from either transformers 4.x (`rope_theta`, `rope_scaling`) or 5.x
    (`rope_parameters`) config fields."""
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_parameters must be an object, found {params!r}")
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"} or None
    if scaling is not None:
        _check_rope_scaling(scaling, "rope_scaling" if hf.get("rope_scaling") else "rope_parameters")
        if scaling.get("rope_type", scaling.get("type")) in (None, "default"):
            scaling = None
    return _number(theta, "rope_theta", positive=True), scaling


def _first(value):
    """HF allows eos_token_id to be a list; our config keeps the first (the sampler's EOS)."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _extra(hf: dict, known: set) -> dict:
    """The HF fields we do not model, kept for export. A list-valued eos_token_id is kept whole
    (as `eos_token_ids`) so that exporting writes the list back."""
    extra = {k: v for k, v in hf.items() if k not in known}
    if isinstance(hf.get("eos_token_id"), (list, tuple)):
        extra["eos_token_ids"] = list(hf["eos_token_id"])
    return extra


def _eos_out(cfg: "TransformerConfig"):
    ids = cfg.hf_extra.get("eos_token_ids")
    if ids and ids[0] == cfg.eos_token_id:
        return list(ids)
    return cfg.eos_token_id


@dataclass
class LLaDAConfig(TransformerConfig):
    """LLaDA: a Llama-shaped decoder run without a causal mask (arXiv 2502.09992; ML-GSAI/LLaDA)."""

    mask_token_id: int = 126336
    # <|eot_id|> of the LLaDA tokenizer; not in LLaDA's config.json, so the sampler's CLI reads it
    # from the tokenizer when present.
    eot_token_id: int | None = None
    rope_in_fp32: bool = True
    max_position_embeddings: int = 4096

    family: ClassVar[str] = "llada"
    causal: ClassVar[bool] = False

    @classmethod
    def from_hf(cls, hf: dict) -> "LLaDAConfig":
        f = "LLaDA"
        _expect(hf, "block_type", ("llama",), f)
        _expect(hf, "activation_type", ("silu", "swiglu"), f)
        _expect(hf, "layer_norm_type", ("rms",), f)
        _expect(hf, "rope", (True,), f)
        _expect(hf, "alibi", (False,), f)
        _expect(hf, "scale_logits", (False,), f)
        _expect(hf, "input_emb_norm", (False,), f)
        _expect(hf, "attention_layer_norm", (False,), f)
        _expect(hf, "block_group_size", (1,), f)
        _expect(hf, "layer_norm_with_affine", (True,), f)
        n_heads = _positive_int(_need(hf, "n_heads", f), "n_heads")
        n_kv = hf.get("n_kv_heads")
        if n_kv is None:
            n_kv = 1 if hf.get("multi_query_attention") else n_heads
        include_bias = _flag(hf.get("include_bias", False), "include_bias")
        vocab_key = "embedding_size" if hf.get("embedding_size") is not None else "vocab_size"
        vocab = _positive_int(_need(hf, vocab_key, f), vocab_key)
        known = {
            "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "embedding_size",
            "rope_theta", "rms_norm_eps", "include_bias", "include_qkv_bias", "weight_tying",
            "max_sequence_length", "eos_token_id", "pad_token_id", "mask_token_id", "bos_token_id",
        }
        return cls(
            vocab_size=vocab,
            hidden_size=_positive_int(_need(hf, "d_model", f), "d_model"),
            num_layers=_positive_int(_need(hf, "n_layers", f), "n_layers"),
            num_heads=n_heads,
            num_kv_heads=_positive_int(n_kv, "n_kv_heads"),
            intermediate_size=_positive_int(_need(hf, "mlp_hidden_size", f), "mlp_hidden_size"),
            rope_theta=_number(hf.get("rope_theta", 10000.0), "rope_theta", positive=True),
            rms_norm_eps=_number(hf.get("rms_norm_eps", 1e-5), "rms_norm_eps", positive=True),
            qkv_bias=include_bias or _flag(hf.get("include_qkv_bias", False), "include_qkv_bias"),
            out_bias=include_bias,
            mlp_bias=include_bias,
            tie_word_embeddings=_flag(hf.get("weight_tying", False), "weight_tying"),
            max_position_embeddings=_positive_int(hf.get("max_sequence_length", 4096), "max_sequence_length"),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            mask_token_id=hf.get("mask_token_id", 126336),
            hf_extra=_extra(hf, known),
        )

    def to_hf(self) -> dict:
        if self.qkv_bias != self.out_bias or self.out_bias != self.mlp_bias:
            if self.out_bias or self.mlp_bias:
                raise ConfigError("LLaDA's config can express q/k/v bias alone or bias everywhere")
        out = {
            "architectures": ["LLaDAModelLM"],
            "model_type": "llada",
            "block_type": "llama",
            "activation_type": "silu",
            "layer_norm_type": "rms",
            "rope": True,
            "alibi": False,
            "rope_full_precision": True,
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModel": "modeling_llada.LLaDAModelLM",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            },
        }
        out.update(self.hf_extra)
        out.pop("eos_token_ids", None)
        out.update(
            d_model=self.hidden_size,
            n_layers=self.num_layers,
            n_heads=self.num_heads,
            n_kv_heads=self.num_kv_heads,
            mlp_hidden_size=self.intermediate_size,
            mlp_ratio=out.get("mlp_ratio", max(1, round(self.intermediate_size / self.hidden_size))),
            embedding_size=self.vocab_size,
            vocab_size=out.get("vocab_size", self.vocab_size),
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            include_bias=self.out_bias,
            include_qkv_bias=self.qkv_bias and not self.out_bias,
            weight_tying=self.tie_word_embeddings,
            max_sequence_length=self.max_position_embeddings,
            eos_token_id=_eos_out(self),
            pad_token_id=self.pad_token_id,
            mask_token_id=self.mask_token_id,
        )
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        return out


@dataclass
class LlamaConfig(TransformerConfig):
    """Llama 2/3.x causal decoders (transformers' LlamaForCausalLM)."""

    family: ClassVar[str] = "llama"
    causal: ClassVar[bool] = True
    _model_type: ClassVar[str] = "llama"
    _architecture: ClassVar[str] = "LlamaForCausalLM"

    @classmethod
    def _common_hf(cls, hf: dict, f: str) -> dict:
        _expect(hf, "hidden_act", ("silu",), f)
        theta, scaling = _hf_rope(hf)
        n_heads = _positive_int(_need(hf, "num_attention_heads", f), "num_attention_heads")
        hidden = _positive_int(_need(hf, "hidden_size", f), "hidden_size")
        known = {
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "head_dim", "rope_theta", "rope_scaling", "rope_parameters",
            "rms_norm_eps", "attention_bias", "mlp_bias", "tie_word_embeddings",
            "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "vocab_size",
        }
        return dict(
            vocab_size=_positive_int(_need(hf, "vocab_size", f), "vocab_size"),
            hidden_size=hidden,
            num_layers=_positive_int(_need(hf, "num_hidden_layers", f), "num_hidden_layers"),
            num_heads=n_heads,
            num_kv_heads=_positive_int(hf.get("num_key_value_heads") or n_heads, "num_key_value_heads"),
            intermediate_size=_positive_int(_need(hf, "intermediate_size", f), "intermediate_size"),
            head_dim=_positive_int(hf.get("head_dim") or hidden // n_heads, "head_dim"),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=_number(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps", positive=True),
            tie_word_embeddings=_flag(hf.get("tie_word_embeddings", False), "tie_word_embeddings"),
            max_position_embeddings=_positive_int(hf.get("max_position_embeddings", 2048), "max_position_embeddings"),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            hf_extra=_extra(hf, known),
        )

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        kw = cls._common_hf(hf, "Llama")
        bias = _flag(hf.get("attention_bias", False), "attention_bias")
        return cls(qkv_bias=bias, out_bias=bias, mlp_bias=_flag(hf.get("mlp_bias", False), "mlp_bias"), **kw)

    def _common_to_hf(self) -> dict:
        out = {"architectures": [self._architecture], "model_type": self._model_type, "hidden_act": "silu"}
        out.update(self.hf_extra)
        out.pop("eos_token_ids", None)
        out.update(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=_eos_out(self),
            pad_token_id=self.pad_token_id,
        )
        # Both spellings, so that transformers 4.x and 5.x read the same rotary settings.
        out["rope_theta"] = self.rope_theta
        out["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        params = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling:
            params.update(self.rope_scaling)
            params.setdefault("rope_type", params.pop("type", "default"))
        out["rope_parameters"] = params
        return out

    def to_hf(self) -> dict:
        if self.qkv_bias != self.out_bias:
            raise ConfigError("Llama's config has one attention_bias for q, k, v and o")
        out = self._common_to_hf()
        out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        return out


@dataclass
class Qwen2Config(LlamaConfig):
    """Qwen2 / Qwen2.5: Llama with a bias on q, k and v (not on o)."""

    qkv_bias: bool = True

    family: ClassVar[str] = "qwen2"
    _model_type: ClassVar[str] = "qwen2"
    _architecture: ClassVar[str] = "Qwen2ForCausalLM"

    @classmethod
    def from_hf(cls, hf: dict) -> "Qwen2Config":
        if hf.get("use_sliding_window"):
            raise ConfigError("Qwen2 config.json: use_sliding_window=true is not supported")
        kw = cls._common_hf(hf, "Qwen2")
        return cls(qkv_bias=True, out_bias=False, mlp_bias=False, **kw)

    def to_hf(self) -> dict:
        if not self.qkv_bias or self.out_bias or self.mlp_bias:
            raise ConfigError("Qwen2's layout has q/k/v bias and no other bias")
        out = self._common_to_hf()
        out.setdefault("use_sliding_window", False)
        return out


CONFIG_CLASSES: dict[str, type[TransformerConfig]] = {
    "llada": LLaDAConfig,
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
}

# HF `model_type` -> family.
HF_MODEL_TYPES = {"llada": "llada", "llama": "llama", "qwen2": "qwen2"}


def read_json(path: str | Path) -> dict:
    """Read a JSON file; a one-line ConfigError names the file and the line of a syntax error."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a JSON file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def jsonl_rows(path: str | Path):
    """(line number, parsed value, error) for every non-blank line of a JSONL file: the value is None
    and error a one-line message ("FILE: line N: invalid JSON (...)", "... invalid UTF-8 ...") when the
    line does not parse. Lines are decoded one at a time, so one bad byte spoils one row, not the
    file. Callers decide whether a bad line stops them or is skipped and counted."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a JSONL file")
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield n, None, f"{path}: line {n}: invalid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
                    continue
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield n, None, f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})"
                except RecursionError:
                    yield n, None, f"{path}: line {n}: invalid JSON (nested too deeply)"
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None


def strict_dataclass(cls, d: dict, what: str):
    """cls(**d), refusing keys that are not fields of cls by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what}: {', '.join(unknown)}")
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in d]
    if missing:
        raise ConfigError(f"missing {what}: {', '.join(missing)}")
    return cls(**d)


def family_of_hf(hf: dict, where: str = "config.json") -> str:
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported (supported: {sorted(HF_MODEL_TYPES)})"
        )
    return HF_MODEL_TYPES[model_type]


def _located(e: ConfigError, where) -> ConfigError:
    """The same error with the file named first (once)."""
    msg = str(e)
    return e if msg.startswith(str(where)) else ConfigError(f"{where}: {msg}")


def config_from_hf(hf: dict, where: str = "config.json") -> TransformerConfig:
    """The config an HF config.json describes; every error names `where`."""
    try:
        return CONFIG_CLASSES[family_of_hf(hf, where)].from_hf(hf)
    except ConfigError as e:
        raise _located(e, where) from None


def native_config(raw: dict, where) -> TransformerConfig:
    """The config of a native config.json (`{"format": "dlmarch", "config": {...}}`); errors name `where`."""
    if not isinstance(raw.get("config"), dict):
        found = "none" if "config" not in raw else type(raw["config"]).__name__
        raise ConfigError(f"{where}: a dlmarch config.json needs a 'config' object, found {found}")
    try:
        return TransformerConfig.from_dict(raw["config"])
    except ConfigError as e:
        raise _located(e, where) from None


__all__ = [
    "TransformerConfig",
    "LLaDAConfig",
    "LlamaConfig",
    "Qwen2Config",
    "DreamConfig",
    "CONFIG_CLASSES",
    "config_from_hf",
    "native_config",
    "family_of_hf",
    "read_json",
]

# Dream's config lives with its model (dlmarch/models/dream.py); it derives from Qwen2Config above,
# imported last because that module imports this one.
from .models.dream import DreamConfig  # noqa: E402

CONFIG_CLASSES["dream"] = DreamConfig
HF_MODEL_TYPES["Dream"] = "dream"
