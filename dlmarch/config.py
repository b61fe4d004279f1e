"""Model configurations: one dataclass per family.

Every family shares `TransformerConfig` (the fields our transformer needs) and adds how it reads and
writes its own Hugging Face `config.json` field names. `to_dict`/`from_dict` give the native form,
which names the family so that a native checkpoint knows what it holds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .errors import ConfigError

ATTN_BACKENDS = ("auto", "sdpa", "flex", "flash")


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
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise ConfigError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")
            if kind == "default":
                self.rope_scaling = None

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
        d = dict(d)
        family = d.pop("family", None)
        cls = CONFIG_CLASSES.get(family)
        if cls is None:
            raise ConfigError(f"unknown model family {family!r} (known: {sorted(CONFIG_CLASSES)})")
        return strict_dataclass(cls, d, f"{family} config field(s)")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TransformerConfig":
        """The config of a checkpoint directory, native or HF."""
        raw = read_json(Path(path) / "config.json")
        cfg = TransformerConfig.from_dict(raw["config"]) if raw.get("format") == "dlmarch" else config_from_hf(raw)
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
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"} or None
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = None
    return float(theta), scaling


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
        n_heads = int(_need(hf, "n_heads", f))
        n_kv = hf.get("n_kv_heads")
        if n_kv is None:
            n_kv = 1 if hf.get("multi_query_attention") else n_heads
        include_bias = bool(hf.get("include_bias", False))
        vocab = hf.get("embedding_size") or _need(hf, "vocab_size", f)
        known = {
            "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "embedding_size",
            "rope_theta", "rms_norm_eps", "include_bias", "include_qkv_bias", "weight_tying",
            "max_sequence_length", "eos_token_id", "pad_token_id", "mask_token_id", "bos_token_id",
        }
        return cls(
            vocab_size=int(vocab),
            hidden_size=int(_need(hf, "d_model", f)),
            num_layers=int(_need(hf, "n_layers", f)),
            num_heads=n_heads,
            num_kv_heads=int(n_kv),
            intermediate_size=int(_need(hf, "mlp_hidden_size", f)),
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            qkv_bias=include_bias or bool(hf.get("include_qkv_bias", False)),
            out_bias=include_bias,
            mlp_bias=include_bias,
            tie_word_embeddings=bool(hf.get("weight_tying", False)),
            max_position_embeddings=int(hf.get("max_sequence_length", 4096)),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            mask_token_id=int(hf.get("mask_token_id", 126336)),
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
        n_heads = int(_need(hf, "num_attention_heads", f))
        hidden = int(_need(hf, "hidden_size", f))
        known = {
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "head_dim", "rope_theta", "rope_scaling", "rope_parameters",
            "rms_norm_eps", "attention_bias", "mlp_bias", "tie_word_embeddings",
            "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "vocab_size",
        }
        return dict(
            vocab_size=int(_need(hf, "vocab_size", f)),
            hidden_size=hidden,
            num_layers=int(_need(hf, "num_hidden_layers", f)),
            num_heads=n_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            intermediate_size=int(_need(hf, "intermediate_size", f)),
            head_dim=int(hf.get("head_dim") or hidden // n_heads),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            hf_extra=_extra(hf, known),
        )

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        kw = cls._common_hf(hf, "Llama")
        bias = bool(hf.get("attention_bias", False))
        return cls(qkv_bias=bias, out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)), **kw)

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
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def jsonl_rows(path: str | Path):
    """(line number, parsed value, error) for every non-blank line of a JSONL file: the value is None
    and error a one-line message ("FILE: line N: invalid JSON (...)") when the line does not parse.
    Callers decide whether a bad line stops them or is skipped and counted."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line), None
            except json.JSONDecodeError as e:
                yield n, None, f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})"


def strict_dataclass(cls, d: dict, what: str):
    """cls(**d), refusing keys that are not fields of cls by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**d)


def family_of_hf(hf: dict, where: str = "config.json") -> str:
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported (supported: {sorted(HF_MODEL_TYPES)})"
        )
    return HF_MODEL_TYPES[model_type]


def config_from_hf(hf: dict, where: str = "config.json") -> TransformerConfig:
    return CONFIG_CLASSES[family_of_hf(hf, where)].from_hf(hf)


__all__ = [
    "TransformerConfig",
    "LLaDAConfig",
    "LlamaConfig",
    "Qwen2Config",
    "DreamConfig",
    "CONFIG_CLASSES",
    "config_from_hf",
    "family_of_hf",
    "read_json",
]

# Dream's config lives with its model (dlmarch/models/dream.py); it derives from Qwen2Config above,
# imported last because that module imports this one.
from .models.dream import DreamConfig  # noqa: E402

CONFIG_CLASSES["dream"] = DreamConfig
HF_MODEL_TYPES["Dream"] = "dream"
