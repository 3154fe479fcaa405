"""Small drafter/verifier pairs for engine tests.

The verifier is the drafter plus one extra decoder layer whose output projections are
scaled down: the two models then agree on most greedy tokens (so speculative blocks
accept several drafts) without being identical. EOS's output column is amplified so
random rows end at different lengths.
"""
import flax
import jax
import numpy as np

from spec_cascade.decoding import Bundle
from spec_cascade.models import T5Model, get_config


def make_pair(vocab: int = 64, emb: int = 32, seed: int = 0, perturb: float = 0.5,
              eos_gain: float = 2.5):
  cfg = get_config("tiny").replace(vocab_size=vocab, emb_dim=emb, num_heads=2, head_dim=16,
                                   mlp_dim=2 * emb, num_encoder_layers=1, num_decoder_layers=2)
  d_model, v_model = T5Model(cfg), T5Model(cfg.replace(num_decoder_layers=3))
  d_params = d_model.init_params(jax.random.key(seed))
  v_params = v_model.init_params(jax.random.key(seed + 1))
  d_flat = flax.traverse_util.flatten_dict(d_params, sep="/")
  v_flat = flax.traverse_util.flatten_dict(v_params, sep="/")
  for k, val in v_flat.items():
    if k in d_flat:
      v_flat[k] = d_flat[k]
    elif k.startswith("decoder/layers_2/") and (k.endswith("out/kernel") or
                                                k.endswith("wo/kernel")):
      v_flat[k] = val * perturb
  for flat in (d_flat, v_flat):
    kernel = np.array(flat["decoder/logits_dense/kernel"])
    kernel[:, 1] *= eos_gain
    flat["decoder/logits_dense/kernel"] = kernel
  d_params = flax.traverse_util.unflatten_dict(d_flat, sep="/")
  v_params = flax.traverse_util.unflatten_dict(v_flat, sep="/")
  return Bundle(d_model, d_params), Bundle(v_model, v_params)


def random_inputs(batch: int, length: int = 7, vocab: int = 64, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  x = rng.integers(2, vocab, (batch, length)).astype(np.int32)
  for row in range(batch):  # padded rows of different lengths
    x[row, rng.integers(2, length + 1):] = 0
  return x
