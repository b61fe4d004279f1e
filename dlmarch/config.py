"""Model configurations: one dataclass per family.

Every family shares `TransformerConfig` (the fields our transformer needs) and adds how it reads and
writes its own Hugging Face `config.json` field names. `to_dict`/`from_dict` give the native form,
which names the family so that a native checkpoint knows what it holds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

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
    _model_type: ClassVar[str] = ""  # config.json's model_type of the HF layout
    causal: ClassVar[bool] = True
    # Whether a config of this family must name its mask token (see the token-id checks below).
    mask_token_required: ClassVar[bool] = True

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
        if self.max_position_embeddings < 2:
            # Every objective and sampler here conditions on at least one token to predict another.
            raise ConfigError(f"max_position_embeddings {self.max_position_embeddings} leaves no room for a prompt "
                              "token and a token to predict (at least 2)")
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
            # Token ids are JSON integers ("5", 5.0 and true are refused, not cast); a mask token is
            # required where the family has one (the sampler writes it), unless the family's Hub configs
            # may leave it out (MoE families: the model card's id, passed to the sampler). They index the embedding;
            # pad_token_id's range is exempt because HF configs write -1 for "none" and nothing here
            # embeds it.
            elif f.name.endswith("_token_id") and (value is not None or (f.name == "mask_token_id"
                                                                      and self.mask_token_required)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{f.name} must be an integer token id, found {value!r}")
                if f.name != "pad_token_id" and not 0 <= value < self.vocab_size:
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

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        """The config of a native `config` object (its fields and `family`), for this family's class;
        `dlmarch.family.config_from_native` picks the class from the family first."""
        if not isinstance(d, dict):
            raise ConfigError(f"a native config must be an object of fields, found {type(d).__name__}")
        d = dict(d)
        family = d.pop("family", None)
        if family != cls.family:
            raise ConfigError(f"model family {family!r} is not {cls.family!r}")
        return strict_dataclass(cls, d, f"{family} config field(s)")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TransformerConfig":
        """The config of a checkpoint directory of this family, native or HF (for any family:
        `dlmarch.registry.config_from_pretrained`)."""
        where = Path(path) / "config.json"
        raw = read_json(where)
        if raw.get("format") == "dlmarch":
            found = raw.get("config")
            if not isinstance(found, dict):
                kind = "none" if "config" not in raw else type(found).__name__
                raise ConfigError(f"{where}: a dlmarch config.json needs a 'config' object, found {kind}")
            if found.get("family") != cls.family:
                raise ConfigError(f"{path} holds a {found.get('family')} config, not a {cls.__name__}")
            try:
                return cls.from_dict(found)
            except ConfigError as e:
                raise located(e, where) from None
        if raw.get("model_type") != cls._model_type:
            raise ConfigError(f"{path} holds a {raw.get('model_type')} config, not a {cls.__name__}")
        try:
            return cls.from_hf(raw)
        except ConfigError as e:
            raise located(e, where) from None

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


# --- HF field tables: each family's config.json fields that are config fields ---------------------------

REQUIRED = object()  # an HFField default: config.json must have the field


@dataclass(frozen=True)
class HFField:
    """A config.json field `hf` that is the config field `ours`.

    read: how from_hf checks it ("count": a positive integer, "number": a positive number, "flag":
    true or false, "token": an id, or the first of a list, "value": as is), None where the family reads it itself;
    default: its value when config.json lacks it (REQUIRED: an error naming it); out: to_hf's value,
    cfg -> value, where it is not `ours` as is (ours None: a field of config.json only)."""

    hf: str
    ours: str | None
    read: str | None = None
    default: object = REQUIRED
    out: Callable | None = None


# A decoder's shape as transformers' config.json names it (Llama's, and most families'); from_hf reads
# num_key_value_heads itself (its default is num_attention_heads).
HF_SHAPE_FIELDS = (
    HFField("vocab_size", "vocab_size", "count"),
    HFField("hidden_size", "hidden_size", "count"),
    HFField("num_hidden_layers", "num_layers", "count"),
    HFField("num_attention_heads", "num_heads", "count"),
    HFField("num_key_value_heads", "num_kv_heads"),
)

_READERS = {"count": _positive_int, "number": lambda v, name: _number(v, name, positive=True), "flag": _flag,
            "token": lambda v, name: _first(v), "value": lambda v, name: v}


def hf_read(hf: dict, table, family: str) -> dict:
    """{our field: checked value} of the fields of `table` that have a `read`, in its order."""
    kw = {}
    for f in table:
        if f.read is not None:
            value = _need(hf, f.hf, family) if f.default is REQUIRED else hf.get(f.hf, f.default)
            kw[f.ours] = _READERS[f.read](value, f.hf)
    return kw


def hf_known(table, *others: str) -> set:
    """The config.json names a family models (its table's and `others`): the rest is hf_extra."""
    return {f.hf for f in table} | set(others)


def hf_write(cfg: "TransformerConfig", head: dict, table) -> dict:
    """A family's config.json: `head` (architectures, model_type, constants), then the fields kept
    in hf_extra from import, then the fields of `table` in its order (which win over both)."""
    out = copy.deepcopy(head)
    out.update(cfg.hf_extra)
    out.pop("eos_token_ids", None)  # written back as the list eos_token_id (_eos_out)
    out.update({f.hf: f.out(cfg) if f.out else getattr(cfg, f.ours) for f in table})
    return out


def hf_rope_scaling(cfg: "TransformerConfig") -> dict | None:
    """rope_scaling as config.json writes it (a copy; null when there is none)."""
    return dict(cfg.rope_scaling) if cfg.rope_scaling else None


def check_regular_file(path: str | Path, kind: str = "file") -> None:
    """Refuse what is not a regular file before reading it: a directory, and a device or FIFO
    (`/dev/zero` never ends, a FIFO blocks); one line naming the path."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{path}: is a directory, not a {kind}")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: not a regular file (a device, FIFO or socket), expected a {kind}")


def read_text(path: str | Path, kind: str = "file") -> str:
    """A regular UTF-8 text file's text; one-line ConfigError naming the file otherwise."""
    path = Path(path)
    check_regular_file(path, kind)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {kind}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid UTF-8 at byte {e.start}") from None


def read_json(path: str | Path) -> dict:
    """Read a JSON file; a one-line ConfigError names the file and the line of a syntax error."""
    path = Path(path)
    text = read_text(path, "JSON file")
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
    check_regular_file(path, "JSONL file")
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
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, None, f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})"
                    continue
                except RecursionError:
                    yield n, None, f"{path}: line {n}: invalid JSON (nested too deeply)"
                    continue
                surrogate = _lone_surrogate(line, value)
                if surrogate:
                    yield n, None, f"{path}: line {n}: a lone surrogate {surrogate} is not text (an unpaired UTF-16 escape)"
                else:
                    yield n, value, None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(line: str, value) -> str | None:
    """The first unpaired surrogate escape of a JSON line (`"\\ud800"` parses, then fails where the
    text is encoded: a tokenizer, a file), or None. Only lines that write such an escape are checked."""
    if not _SURROGATE_ESCAPE.search(line):
        return None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return f"\\u{ord(e.object[e.start]):04x}"


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


def located(e: ConfigError, where) -> ConfigError:
    """The same error with the file named first (once)."""
    msg = str(e)
    return e if msg.startswith(str(where)) else ConfigError(f"{where}: {msg}")


__all__ = ["TransformerConfig", "read_json", "jsonl_rows", "strict_dataclass"]
