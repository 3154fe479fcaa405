"""T5 shapes: the config dataclass and the named sizes (T5X's `network.T5Config`)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import gin


def check_dtypes(owner: str, dtype: str, matmul_dtype: str | None) -> None:
  """ValueError unless the activation / matmul dtype fields of config `owner` are known."""
  if dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"{owner}.dtype={dtype!r}: use 'float32' (CPU) or 'bfloat16' "
                     "(TPU/GPU).")
  if matmul_dtype not in (None, "float32", "bfloat16", "float16"):
    raise ValueError(f"{owner}.matmul_dtype={matmul_dtype!r}: use None (the "
                     "activation dtype), 'float32', 'bfloat16' or 'float16'.")


@gin.configurable(module="spec_cascade.models")
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shapes and options of a T5 encoder-decoder; field names follow T5X's gin.

  `mlp_activations=('gelu', 'linear')` with `logits_via_embedding=False` is T5 v1.1
  (gated-GELU, untied output layer); `('relu',)` with `logits_via_embedding=True` is
  T5 v1.0 (ReLU MLP, output tied to the embedding and scaled by emb_dim**-0.5).
  `dtype` is the activation dtype; parameters are always float32. `matmul_dtype` (None: the
  activation dtype) is what the dense layers' matmuls take their inputs in, accumulating in
  float32: 'bfloat16' with float32 activations runs a bfloat16 checkpoint's matmuls at
  bfloat16 speed on CPUs with AMX / AVX512-BF16 while norms, softmax and residuals stay in
  float32 (bench/RESULTS.md).
  """
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  mlp_activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False
  dtype: str = "float32"
  matmul_dtype: str | None = None
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for name in ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                 "num_decoder_layers", "head_dim", "mlp_dim",
                 "relpos_num_buckets", "relpos_max_distance"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}.")
    known = {"gelu", "relu", "linear", "silu", "gelu_new"}
    bad = [a for a in self.mlp_activations if a not in known]
    if not self.mlp_activations or bad:
      raise ValueError(f"T5Config.mlp_activations={self.mlp_activations!r}: each entry "
                       f"must be one of {sorted(known)}.")
    check_dtypes("T5Config", self.dtype, self.matmul_dtype)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"T5Config.dropout_rate={self.dropout_rate} must be in [0, 1).")

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)


_V11 = dict(vocab_size=32128, head_dim=64, mlp_activations=("gelu", "linear"),
            logits_via_embedding=False)
_V10 = dict(vocab_size=32128, head_dim=64, mlp_activations=("relu",),
            logits_via_embedding=True)

NAMED_CONFIGS: dict[str, T5Config] = {
    "t5_1_1_small": T5Config(**_V11, emb_dim=512, num_heads=6, num_encoder_layers=8,
                             num_decoder_layers=8, mlp_dim=1024),
    "t5_1_1_base": T5Config(**_V11, emb_dim=768, num_heads=12, num_encoder_layers=12,
                            num_decoder_layers=12, mlp_dim=2048),
    "t5_1_1_large": T5Config(**_V11, emb_dim=1024, num_heads=16, num_encoder_layers=24,
                             num_decoder_layers=24, mlp_dim=2816),
    "t5_1_1_xl": T5Config(**_V11, emb_dim=2048, num_heads=32, num_encoder_layers=24,
                          num_decoder_layers=24, mlp_dim=5120),
    "t5_1_1_xxl": T5Config(**_V11, emb_dim=4096, num_heads=64, num_encoder_layers=24,
                           num_decoder_layers=24, mlp_dim=10240),
    "t5_1_0_small": T5Config(**_V10, emb_dim=512, num_heads=8, num_encoder_layers=6,
                             num_decoder_layers=6, mlp_dim=2048),
    "t5_1_0_base": T5Config(**_V10, emb_dim=768, num_heads=12, num_encoder_layers=12,
                            num_decoder_layers=12, mlp_dim=3072),
    # CPU sizes (T5 v1.1 layout) for tests and the offline default pair. The
    # vocabulary matches the offline SentencePiece model (4000 pieces + 100 extra
    # ids, padded to a multiple of 128 as T5 pads 32100 to 32128).
    "tiny": T5Config(**{**_V11, "vocab_size": 4224, "head_dim": 32}, emb_dim=128, num_heads=4,
                     num_encoder_layers=2, num_decoder_layers=2, mlp_dim=256),
    "mini": T5Config(**{**_V11, "vocab_size": 4224}, emb_dim=256, num_heads=4,
                     num_encoder_layers=4, num_decoder_layers=4, mlp_dim=640),
    # mini with twice the decoder depth: grown from the trained mini (models/grow.py), so its
    # batch-1 decode step costs ≈ 10 tiny steps (c ≈ 0.09) where mini's costs ≈ 4.
    "mini_deep": T5Config(**{**_V11, "vocab_size": 4224}, emb_dim=256, num_heads=4,
                          num_encoder_layers=4, num_decoder_layers=8, mlp_dim=640),
    # mini_deep's embeddings, encoder and one decoder layer: a drafter cut from the verifier
    # (models/grow.py `keep_layers`) whose decode step costs about one tiny step (c ≈ 0.07).
    "mini_shallow": T5Config(**{**_V11, "vocab_size": 4224}, emb_dim=256, num_heads=4,
                             num_encoder_layers=4, num_decoder_layers=1, mlp_dim=640),
}

# Published parameter counts, for checking the shapes above.
PUBLISHED_PARAMS = {
    "t5_1_1_small": 77e6, "t5_1_1_base": 248e6, "t5_1_1_large": 783e6,
    "t5_1_1_xl": 2.85e9, "t5_1_1_xxl": 11.1e9, "t5_1_0_small": 60e6, "t5_1_0_base": 220e6,
}


@gin.configurable(module="spec_cascade.models")
def get_config(name: str, **overrides) -> T5Config:
  """Returns the named T5 size, optionally with fields replaced (e.g. vocab_size)."""
  if name not in NAMED_CONFIGS:
    raise ValueError(f"Unknown T5 size {name!r}; known sizes: {sorted(NAMED_CONFIGS)}.")
  return NAMED_CONFIGS[name].replace(**overrides) if overrides else NAMED_CONFIGS[name]
