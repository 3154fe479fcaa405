"""Small drafter/verifier pairs for engine tests.

The verifier is the drafter plus one extra decoder layer whose output projections are
scaled down: the two models then agree on most greedy tokens (so speculative blocks
accept several drafts) without being identical. EOS's output column is amplified so
random rows end at different lengths.
"""
import dataclasses

import flax
import jax
import numpy as np

from spec_cascade.decoding import Bundle
from spec_cascade.models import DecoderConfig, DecoderOnlyModel, T5Model, get_config


def make_pair(vocab: int = 64, emb: int = 32, seed: int = 0, perturb: float = 0.5,
              eos_gain: float = 2.5):
  cfg = get_config("tiny").replace(vocab_size=vocab, emb_dim=emb, num_heads=2, head_dim=16,
                                   mlp_dim=2 * emb, num_encoder_layers=1, num_decoder_layers=2)
  d_model, v_model = T5Model(cfg), T5Model(cfg.replace(num_decoder_layers=3))
  d_params = d_model.init_params(jax.random.key(seed))
  v_params = v_model.init_params(jax.random.key(seed + 1))
  d_params, v_params = _share_and_perturb(d_params, v_params, perturb, eos_gain, eos_id=1)
  return Bundle(d_model, d_params), Bundle(v_model, v_params)


def _share_and_perturb(d_params, v_params, perturb: float, eos_gain: float, eos_id: int):
  """The verifier's parameters = the drafter's, plus its extra layer (decoder layers_2) with
  output projections scaled by `perturb`; both models' EOS logit column times eos_gain."""
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
    kernel[:, eos_id] *= eos_gain
    flat["decoder/logits_dense/kernel"] = kernel
  return (flax.traverse_util.unflatten_dict(d_flat, sep="/"),
          flax.traverse_util.unflatten_dict(v_flat, sep="/"))


def random_inputs(batch: int, length: int = 7, vocab: int = 64, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  x = rng.integers(2, vocab, (batch, length)).astype(np.int32)
  for row in range(batch):  # padded rows of different lengths
    x[row, rng.integers(2, length + 1):] = 0
  return x


def make_decoder_pair(vocab: int = 64, emb: int = 32, seed: int = 0, perturb: float = 0.5,
                      eos_gain: float = 2.5, eos_id: int = 1, family: str = "llama"):
  """A decoder-only pair built like `make_pair`: the verifier is the drafter plus one layer
  whose output projections are scaled by `perturb`; EOS's logit column amplified.
  family 'llama' (SwiGLU, GQA) or 'gemma' (GeGLU, MQA, scaled embeddings, 1 + w norms)."""
  extra = (dict(mlp_activation="gelu", num_kv_heads=1, scale_embeddings=True,
                norm_scale_plus_one=True) if family == "gemma" else dict(num_kv_heads=1))
  cfg = DecoderConfig(vocab_size=vocab, emb_dim=emb, num_heads=2, head_dim=16, mlp_dim=2 * emb,
                      num_layers=2, eos_id=eos_id, **extra)
  d_model = DecoderOnlyModel(cfg)
  v_model = DecoderOnlyModel(dataclasses.replace(cfg, num_layers=3))
  d_params, v_params = _share_and_perturb(d_model.init_params(jax.random.key(seed)),
                                          v_model.init_params(jax.random.key(seed + 1)),
                                          perturb, eos_gain, eos_id)
  return Bundle(d_model, d_params), Bundle(v_model, v_params)


def block_and_steps(model, params, inputs, tokens, offsets, cache_length: int):
  """A T5 model's logits for tokens [B, k] at offsets [B] scored as one block and as k
  one-token steps (both [B, k, V], numpy), from the cache of inputs [B, S]: what a verify
  call and the verifier alone compute for the same positions."""
  encoded, mask = model.encode(params, inputs)
  cache = model.init_cache(params, encoded, mask, cache_length)
  step = jax.jit(model.decode_block)
  block, _ = step(params, cache, tokens, offsets)
  singles = []
  for i in range(tokens.shape[1]):
    logits, cache = step(params, cache, tokens[:, i:i + 1], offsets + i)
    singles.append(np.asarray(logits))
  return np.asarray(block), np.concatenate(singles, axis=1)
