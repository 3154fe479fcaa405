"""Decoder-only shapes and options (Llama, Gemma, Gemma 2, Qwen2 families) and named sizes.

One dataclass covers the four Hugging Face architectures we import; each architecture is a
set of switches on it (see `DecoderConfig`). Named sizes carry the published shapes so that
`jax.eval_shape` parameter counts can be checked against the published counts
(`PUBLISHED_PARAMS`, tests/test_decoder_only.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import gin

from spec_cascade.models.configs import check_dtypes

# RoPE scalings we implement, with the keys each needs (HF `rope_parameters` names).
ROPE_SCALINGS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}
MLP_ACTIVATIONS = ("silu", "gelu")  # 'gelu' is the tanh approximation (layers._act)


@gin.configurable(module="spec_cascade.models")
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shapes and options of a decoder-only transformer (pre-norm, RoPE, gated MLP).

  Architectures as switches (HF name → fields):
    llama:  mlp_activation='silu'; RMSNorm weight w; untied or tied output.
    qwen2:  llama + qkv_bias=True.
    gemma:  mlp_activation='gelu'; scale_embeddings (x · sqrt(emb_dim));
            norm_scale_plus_one (RMSNorm scales by 1 + w); tie_embeddings.
    gemma2: gemma + post_norms (a norm after attention and after the MLP, before the
            residual add), attn_logit_softcap, final_logit_softcap,
            query_pre_attn_scalar, and sliding-window attention on every layer except
            each `sliding_window_pattern`-th (Gemma 2: 2 → layers 0, 2, 4, ... slide).

  num_kv_heads: num_heads (MHA), 1 (MQA) or a divisor of num_heads (GQA).
  query_pre_attn_scalar: attention logits are scaled by its -1/2 power (None: head_dim);
    Gemma 2 27B uses emb_dim / num_heads = 144 with head_dim 128.
  rope_base: RoPE's θ (10 000 for Llama 2 / Gemma, 500 000 for Llama 3, 1e6 for Qwen2).
  rope_scaling: None or a mapping with 'rope_type' in ROPE_SCALINGS and that type's keys
    (HF's names); stored as a sorted tuple of items so the config stays hashable.
  eos_id: the token that ends a generation (config.json's eos_token_id; the first one when
    it lists several).
  The output layer is the embedding matrix itself when tie_embeddings (no rescaling, unlike
    T5 v1.0's tied head). `dtype` / `matmul_dtype` as in T5Config; parameters stay float32.
  """
  vocab_size: int = 256
  emb_dim: int = 64
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 128
  num_layers: int = 2
  mlp_activation: str = "silu"
  tie_embeddings: bool = False
  scale_embeddings: bool = False
  norm_scale_plus_one: bool = False
  post_norms: bool = False
  qkv_bias: bool = False
  layer_norm_epsilon: float = 1e-6
  rope_base: float = 10000.0
  rope_scaling: Any = None
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  sliding_window: int | None = None
  sliding_window_pattern: int = 2
  dtype: str = "float32"
  matmul_dtype: str | None = None
  # The token that ends generation (Gemma: 1; Llama 2: 2; Llama 3 / Qwen2: large ids); the
  # decode engine stops a row there. Hugging Face's config.json calls it eos_token_id.
  eos_id: int = 1

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                 "num_layers", "sliding_window_pattern"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"DecoderConfig.{name} must be a positive int, got {value!r}.")
    if not isinstance(self.eos_id, int) or isinstance(self.eos_id, bool) or not (
        0 <= self.eos_id < self.vocab_size):
      raise ValueError(f"DecoderConfig.eos_id must be a token id in [0, vocab_size="
                       f"{self.vocab_size}), got {self.eos_id!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"DecoderConfig.num_kv_heads={self.num_kv_heads} must divide "
                       f"num_heads={self.num_heads} (grouped-query attention).")
    if self.head_dim % 2:
      raise ValueError(f"DecoderConfig.head_dim={self.head_dim} must be even: RoPE rotates "
                       "pairs of dimensions.")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"DecoderConfig.mlp_activation={self.mlp_activation!r}: use one of "
                       f"{MLP_ACTIVATIONS} ('gelu' is the tanh approximation).")
    for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap",
                 "rope_base", "layer_norm_epsilon"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"DecoderConfig.{name} must be positive or None, got {value!r}.")
    if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                            or self.sliding_window <= 0):
      raise ValueError(f"DecoderConfig.sliding_window must be a positive int or None, got "
                       f"{self.sliding_window!r}.")
    object.__setattr__(self, "rope_scaling", _normalize_rope_scaling(self.rope_scaling))
    check_dtypes("DecoderConfig", self.dtype, self.matmul_dtype)

  def replace(self, **changes) -> "DecoderConfig":
    return dataclasses.replace(self, **changes)

  @property
  def query_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def is_sliding(self, layer: int) -> bool:
    """Whether layer `layer` (0-based) attends through the sliding window."""
    return (self.sliding_window is not None
            and (layer + 1) % self.sliding_window_pattern != 0)

  @property
  def family(self) -> str:
    """The HF architecture these switches make, or 'custom' (then export refuses)."""
    gemma = self.scale_embeddings and self.norm_scale_plus_one and not self.qkv_bias
    gemma2_parts = (self.post_norms, self.attn_logit_softcap is not None,
                    self.final_logit_softcap is not None, self.sliding_window is not None)
    if gemma and all(gemma2_parts) and self.sliding_window_pattern == 2:
      return "gemma2"
    if any(gemma2_parts) or self.scale_embeddings != self.norm_scale_plus_one:
      return "custom"
    if self.query_pre_attn_scalar not in (None, self.head_dim):
      return "custom"
    if gemma:
      return "gemma"
    return "qwen2" if self.qkv_bias else "llama"


def _normalize_rope_scaling(scaling: Any) -> tuple[tuple[str, Any], ...] | None:
  """None | mapping | tuple of items → None or a sorted tuple of items, checked."""
  if scaling is None:
    return None
  items = dict(scaling)
  kind = items.get("rope_type", items.get("type"))
  if kind in (None, "default"):
    return None
  if kind not in ROPE_SCALINGS:
    raise ValueError(f"RoPE scaling {kind!r} is not implemented (implemented: "
                     f"{sorted(ROPE_SCALINGS)}); such a checkpoint's positions would be "
                     "wrong here.")
  missing = [k for k in ROPE_SCALINGS[kind] if k not in items]
  if missing:
    raise ValueError(f"RoPE scaling {kind!r} needs {missing}; got {items}.")
  return tuple(sorted({"rope_type": kind, **{k: items[k] for k in ROPE_SCALINGS[kind]}}
                      .items()))


def rope_inverse_frequencies(config: DecoderConfig) -> list[float]:
  """The head_dim / 2 RoPE frequencies θ^(-2i/D), after the configured scaling."""
  d = config.head_dim
  inv = [config.rope_base ** (-(2 * i) / d) for i in range(d // 2)]
  if config.rope_scaling is None:
    return inv
  s = dict(config.rope_scaling)
  factor = float(s["factor"])
  if s["rope_type"] == "linear":
    # Positions divided by the factor, i.e. every frequency divided by it.
    return [f / factor for f in inv]
  # llama3: long wavelengths (beyond the original context / low_freq_factor) are slowed by
  # `factor`, short ones (below original / high_freq_factor) kept, and the band between
  # interpolated linearly in (original context / wavelength).
  old = float(s["original_max_position_embeddings"])
  low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
  out = []
  for f in inv:
    wavelength = 2 * math.pi / f
    if wavelength < old / high:
      out.append(f)
    elif wavelength > old / low:
      out.append(f / factor)
    else:
      smooth = (old / wavelength - low) / (high - low)
      out.append((1 - smooth) * f / factor + smooth * f)
  return out


_GEMMA = dict(vocab_size=256000, head_dim=256, mlp_activation="gelu", tie_embeddings=True,
              scale_embeddings=True, norm_scale_plus_one=True, layer_norm_epsilon=1e-6,
              rope_base=10000.0)
_GEMMA2 = dict(_GEMMA, post_norms=True, attn_logit_softcap=50.0, final_logit_softcap=30.0,
               sliding_window=4096, sliding_window_pattern=2)
_LLAMA3 = dict(vocab_size=128256, mlp_activation="silu", layer_norm_epsilon=1e-5,
               rope_base=500000.0)


def _llama3_scaling(factor: float) -> dict[str, Any]:
  return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


# Shapes from the models' HF config.json files (google/gemma-2b, gemma-7b, gemma-2-2b,
# gemma-2-9b, gemma-2-27b; meta-llama/Llama-3.2-1B, Llama-3.1-8B).
NAMED_DECODER_CONFIGS: dict[str, DecoderConfig] = {
    "gemma_2b": DecoderConfig(**_GEMMA, emb_dim=2048, num_heads=8, num_kv_heads=1,
                              mlp_dim=16384, num_layers=18),
    "gemma_7b": DecoderConfig(**_GEMMA, emb_dim=3072, num_heads=16, num_kv_heads=16,
                              mlp_dim=24576, num_layers=28),
    "gemma2_2b": DecoderConfig(**_GEMMA2, emb_dim=2304, num_heads=8, num_kv_heads=4,
                               mlp_dim=9216, num_layers=26, query_pre_attn_scalar=256),
    "gemma2_9b": DecoderConfig(**_GEMMA2, emb_dim=3584, num_heads=16, num_kv_heads=8,
                               mlp_dim=14336, num_layers=42, query_pre_attn_scalar=256),
    "gemma2_27b": DecoderConfig(**{**_GEMMA2, "head_dim": 128}, emb_dim=4608, num_heads=32,
                                num_kv_heads=16, mlp_dim=36864, num_layers=46,
                                query_pre_attn_scalar=144),
    "llama3_1b": DecoderConfig(**_LLAMA3, emb_dim=2048, num_heads=32, num_kv_heads=8,
                               head_dim=64, mlp_dim=8192, num_layers=16, tie_embeddings=True,
                               rope_scaling=_llama3_scaling(32.0)),
    "llama3_8b": DecoderConfig(**_LLAMA3, emb_dim=4096, num_heads=32, num_kv_heads=8,
                               head_dim=128, mlp_dim=14336, num_layers=32,
                               rope_scaling=_llama3_scaling(8.0)),
}

# Published parameter counts (exact): the "total" parameter count HF shows for each
# checkpoint's safetensors (model.safetensors.index.json metadata.total_size / bytes per
# parameter); embeddings counted once where tied.
PUBLISHED_DECODER_PARAMS = {
    "gemma_2b": 2_506_172_416, "gemma_7b": 8_537_680_896,
    "gemma2_2b": 2_614_341_888, "gemma2_9b": 9_241_705_984, "gemma2_27b": 27_227_128_320,
    "llama3_1b": 1_235_814_400, "llama3_8b": 8_030_261_248,
}


@gin.configurable(module="spec_cascade.models")
def get_decoder_config(name: str, **overrides) -> DecoderConfig:
  """Returns the named decoder-only size, optionally with fields replaced."""
  if name not in NAMED_DECODER_CONFIGS:
    raise ValueError(f"Unknown decoder-only size {name!r}; known sizes: "
                     f"{sorted(NAMED_DECODER_CONFIGS)}.")
  config = NAMED_DECODER_CONFIGS[name]
  return config.replace(**overrides) if overrides else config


def config_to_dict(config: DecoderConfig) -> dict[str, Any]:
  """DecoderConfig → JSON-able dict (rope_scaling becomes a dict)."""
  d = dataclasses.asdict(config)
  d["rope_scaling"] = None if config.rope_scaling is None else dict(config.rope_scaling)
  return d


def config_from_dict(d: Mapping[str, Any], where: str = "Checkpoint config") -> DecoderConfig:
  """Inverse of `config_to_dict`; unknown keys are an error (a newer writer)."""
  known = {f.name for f in dataclasses.fields(DecoderConfig)}
  unknown = sorted(set(d) - known) if isinstance(d, Mapping) else None
  if unknown is None or unknown:
    raise ValueError(f"{where}: not a mapping of DecoderConfig fields (unknown: {unknown}); "
                     "was it written by a newer spec_cascade?")
  try:
    return DecoderConfig(**d)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: invalid DecoderConfig ({e}).") from None
