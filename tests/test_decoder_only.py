"""Decoder-only models: cache semantics, configs and parameter counts, HF import/export and
parity with transformers (logits and greedy generations) for Llama, Gemma, Gemma 2, Qwen2."""
import copy
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec_cascade import checkpoints
from spec_cascade import convert
from spec_cascade import hf_decoder
from spec_cascade import parallel
from spec_cascade.models import (NAMED_DECODER_CONFIGS, DecoderConfig, DecoderOnlyModel,
                                 get_decoder_config)
from spec_cascade.models.decoder_configs import PUBLISHED_DECODER_PARAMS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
# Every switch at once: GQA, q/k/v biases, post norms, both soft-caps, a 3-token sliding
# window on layers 0 and 2, Gemma's norm and embedding scaling, llama3 RoPE scaling.
ALL_SWITCHES = DecoderConfig(
    vocab_size=97, emb_dim=48, num_heads=4, num_kv_heads=2, head_dim=12, mlp_dim=64,
    num_layers=3, qkv_bias=True, post_norms=True, attn_logit_softcap=2.0,
    final_logit_softcap=5.0, sliding_window=3, scale_embeddings=True, norm_scale_plus_one=True,
    rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
PLAIN = DecoderConfig(vocab_size=97, emb_dim=48, num_heads=4, num_kv_heads=1, head_dim=12,
                      mlp_dim=64, num_layers=2, tie_embeddings=True, mlp_activation="gelu")


def _random_params(model, seed):
  """Fan-in-scaled normal weights, norms and biases away from their init (so a mixed-up
  norm, w vs 1 + w, shows); numpy, because compiling init_params costs seconds on CPU."""
  rng = np.random.default_rng(seed)
  def one(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name.endswith(("scale", "bias")):
      x = 0.3 * rng.standard_normal(leaf.shape)
    else:
      x = rng.standard_normal(leaf.shape) * leaf.shape[-1 if "embedding" in name else 0] ** -0.5
    return jnp.asarray(x, jnp.float32)
  return jax.tree_util.tree_map_with_path(one, model.abstract_params())


@pytest.fixture(scope="module", params=[ALL_SWITCHES, PLAIN], ids=["all_switches", "plain"])
def setup(request):
  model = DecoderOnlyModel(request.param)
  params = _random_params(model, 0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (3, 12)), jnp.int32)
  return model, params, tokens, np.asarray(jax.jit(model.forward)(params, tokens))


def _rows(x, starts, k):
  return np.stack([np.asarray(x)[b, s:s + k] for b, s in enumerate(starts)])


def test_prefill_then_blocks_at_per_row_offsets_match_teacher_forcing(setup):
  model, params, tokens, ref = setup
  lengths = np.array([5, 2, 8])
  # Right padding with junk: prefill must ignore everything past each row's length.
  padded = jnp.where(jnp.arange(9)[None] < lengths[:, None], tokens[:, :9], 7)
  last, cache = jax.jit(model.prefill, static_argnums=3)(params, padded, jnp.asarray(lengths), 12)
  np.testing.assert_allclose(last, ref[np.arange(3), lengths - 1], atol=TOL, rtol=0)
  np.testing.assert_array_equal(cache.lengths, lengths)
  block = jnp.asarray(_rows(tokens, lengths, 3))
  logits, cache = jax.jit(model.decode_block)(params, cache, block)  # offsets = lengths
  assert logits.shape == (3, 3, model.config.vocab_size)
  np.testing.assert_allclose(logits, _rows(ref, lengths, 3), atol=TOL, rtol=0)
  np.testing.assert_array_equal(cache.lengths, lengths + 3)


def test_rollback_then_a_different_block_matches_teacher_forcing(setup):
  """A rejected draft is forgotten: roll back to per-row lengths, decode other tokens."""
  model, params, tokens, _ = setup
  lengths = np.array([3, 6, 4])
  _, cache = jax.jit(model.prefill, static_argnums=3)(params, tokens[:, :6],
                                                      jnp.asarray(lengths), 12)
  step = jax.jit(model.decode_block)
  _, cache = step(params, cache, jnp.full((3, 4), 11, jnp.int32))
  accepted = np.array([1, 0, 3])  # keep this many of the four drafted tokens
  cache = model.rollback(cache, jnp.asarray(lengths + accepted))
  fixed = np.asarray(tokens).copy()
  for b, (n, a) in enumerate(zip(lengths, accepted)):
    fixed[b, n:n + a] = 11
  ref = np.asarray(jax.jit(model.forward)(params, jnp.asarray(fixed)))
  starts = lengths + accepted
  logits, _ = step(params, cache, jnp.asarray(_rows(fixed, starts, 2)))
  np.testing.assert_allclose(logits, _rows(ref, starts, 2), atol=TOL, rtol=0)


def test_sliding_window_and_softcaps_change_the_function():
  """The switches are live: each one, turned off, changes the logits."""
  params = _random_params(DecoderOnlyModel(ALL_SWITCHES), 1)
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 97, (2, 10)), jnp.int32)
  forward = lambda cfg: np.asarray(jax.jit(DecoderOnlyModel(cfg).forward)(params, tokens))
  ref = forward(ALL_SWITCHES)
  assert np.abs(ref).max() <= ALL_SWITCHES.final_logit_softcap
  for change in (dict(sliding_window=None), dict(attn_logit_softcap=None),
                 dict(rope_scaling=None), dict(rope_base=500.0)):
    other = forward(ALL_SWITCHES.replace(**change))
    assert np.abs(other - ref).max() > 1e-3, change
    if "sliding_window" in change:
      # The window hides only keys 3 or more positions back: the first 3 positions agree.
      np.testing.assert_allclose(other[:, :3], ref[:, :3], atol=TOL, rtol=0)


def test_bfloat16_close_to_float32_and_decodes_the_same_way(setup):
  """bfloat16 activations (and bfloat16-rounded parameters, as a bf16 checkpoint loads) give
  float32 logits close to float32's, and the cached path agrees with teacher forcing in
  bfloat16 too."""
  model, params, tokens, ref = setup
  bf = DecoderOnlyModel(model.config.replace(dtype="bfloat16"))
  p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  logits = np.asarray(jax.jit(bf.forward)(p16, tokens))
  assert logits.dtype == np.float32
  assert np.abs(logits - ref).max() < 0.1 * np.abs(ref).max()
  assert (logits.argmax(-1) == ref.argmax(-1)).mean() > 0.8
  lengths = jnp.asarray([5, 8, 3], jnp.int32)
  first, cache = bf.prefill(p16, tokens[:, :8], lengths, 16)
  assert cache.k[0].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(first), logits[np.arange(3), np.asarray(lengths) - 1],
                             atol=0.05 * np.abs(logits).max())
  mm = DecoderOnlyModel(model.config.replace(matmul_dtype="bfloat16"))
  err = np.abs(np.asarray(jax.jit(mm.forward)(params, tokens)) - ref).max()
  assert 0 < err < 0.05 * np.abs(ref).max()


def test_bad_configs_and_inputs_are_refused():
  with pytest.raises(ValueError, match="num_kv_heads=3 must divide"):
    DecoderConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="'yarn' is not implemented"):
    DecoderConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0})
  with pytest.raises(ValueError, match="mlp_activation"):
    DecoderConfig(mlp_activation="relu")
  model = DecoderOnlyModel(PLAIN)
  cache = model.init_cache(2, 8)
  with pytest.raises(ValueError, match="shorter than the padded prompts"):
    model.prefill({}, jnp.ones((2, 9), jnp.int32), jnp.ones((2,), jnp.int32), 8)
  with pytest.raises(ValueError, match="offsets must have shape"):
    model.decode_block({}, cache, jnp.ones((2, 1), jnp.int32), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="lengths must have shape"):
    model.rollback(cache, jnp.zeros((3,), jnp.int32))


# ----------------------------------------------------------------------------------------------
# Named sizes, gin files, sharding rules.

_GINS = {"gemma/2b": "gemma_2b", "gemma/7b": "gemma_7b", "gemma2/2b": "gemma2_2b",
         "gemma2/9b": "gemma2_9b", "gemma2/27b": "gemma2_27b", "llama/1b": "llama3_1b",
         "llama/8b": "llama3_8b"}


@pytest.mark.parametrize("name", sorted(NAMED_DECODER_CONFIGS))
def test_named_sizes_have_the_published_parameter_counts(name):
  assert DecoderOnlyModel(get_decoder_config(name)).num_params() == (
      PUBLISHED_DECODER_PARAMS[name])


@pytest.mark.parametrize("gin_file", sorted(_GINS))
def test_model_gins_match_the_named_sizes(gin_file):
  try:
    gin.clear_config()
    gin.add_config_file_search_path(REPO)
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO, f"configs/models/{gin_file}.gin")], [], finalize_config=False)
    cfg = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert cfg.dtype == "bfloat16"
  assert cfg.replace(dtype="float32") == NAMED_DECODER_CONFIGS[_GINS[gin_file]]
  assert cfg.family == gin_file.split("/")[0]


@pytest.mark.parametrize("name", ["gemma2_27b", "llama3_8b"])
def test_every_parameter_has_logical_axes_and_splits_over_model(name):
  """The T5X rules shard the big models' matmuls over 'model' (mesh shape only: no devices)."""
  model = DecoderOnlyModel(get_decoder_config(name))
  mesh = jax.sharding.AbstractMesh((1, 8), ("data", "model"))
  flat = checkpoints.flatten(model.abstract_params())
  for path, leaf in flat.items():
    assert parallel.logical_axes(path) is not None, path
    spec = parallel.param_spec(mesh, path, leaf.shape)
    if leaf.ndim == 2:  # every matrix has one dimension split over 'model'
      assert "model" in tuple(spec), (path, spec)
  qwen_like = DecoderOnlyModel(PLAIN.replace(qkv_bias=True, tie_embeddings=False))
  for path in checkpoints.flatten(qwen_like.abstract_params()):
    assert parallel.logical_axes(path) is not None, path


# ----------------------------------------------------------------------------------------------
# Hugging Face: refusal of what we do not implement (config.json only, no transformers).

def _write_config(tmp_path, **hf):
  base = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=24,
              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
  (tmp_path / "config.json").write_text(json.dumps({**base, **hf}))
  return str(tmp_path)


@pytest.mark.parametrize("hf, match", [
    (dict(model_type="mixtral"), "model_type 'mixtral' is not supported"),
    (dict(model_type="gpt2"), "model_type 'gpt2' is not supported"),
    (dict(num_local_experts=8), "mixture-of-experts"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn' is not implemented"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
     "'dynamic' is not implemented"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(model_type="qwen2", use_sliding_window=True), "use_sliding_window=True"),
    (dict(hidden_act="gelu"), "activation 'gelu'"),
    (dict(model_type="gemma2", layer_types=["full_attention"]), "layer_types"),
    (dict(model_type="gemma2", attn_logit_softcapping=None), "not 'gemma2'"),
])
def test_unsupported_hf_configs_are_refused_by_name(tmp_path, hf, match):
  with pytest.raises(hf_decoder.UnsupportedHFConfig, match=match):
    hf_decoder.load_hf_decoder(_write_config(tmp_path, **hf))


def test_convert_cli_writes_a_restorable_checkpoint_and_gin(tmp_path, capsys):
  """--from hf on a decoder-only dir (here one we exported, sharded) → Orbax + model.gin."""
  config = get_decoder_config("gemma2_2b").replace(
      vocab_size=64, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
      num_layers=2, sliding_window=4, dtype="float32")
  model = DecoderOnlyModel(config)
  params = model.init_params(jax.random.key(2))
  hf_decoder.export_hf_decoder(params, config, str(tmp_path / "hf"), max_shard_bytes=20_000)
  assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
  assert convert.main(["--from", "hf", str(tmp_path / "hf"), "--to", str(tmp_path / "ours"),
                       "--gin_scope", "drafter"]) == 0
  restored, got = hf_decoder.restore_decoder_checkpoint(str(tmp_path / "ours"))
  assert got == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)
  try:
    gin.clear_config()
    gin.parse_config_files_and_bindings([str(tmp_path / "ours" / "model.gin")], [],
                                        finalize_config=False)
    with gin.config_scope("drafter"):
      assert DecoderConfig() == config
  finally:
    gin.clear_config()
  with pytest.raises(ValueError, match="decoder-only checkpoint"):
    checkpoints.load_params(str(tmp_path / "ours"))
  capsys.readouterr()
  assert convert.main(["--from", "hf", str(tmp_path / "hf"), "--to", str(tmp_path / "x"),
                       "--config", "gemma_2b"]) == 2
  assert "is not gemma_2b: vocab_size: checkpoint 64 vs gemma_2b 256000" in (
      capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------
# Parity with transformers on small random models of each architecture.

_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
               num_attention_heads=4, head_dim=16, attn_implementation="eager", pad_token_id=0)
_ARCHS = {
    # name: (config class, its arguments)
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, rope_parameters={
        "rope_type": "default", "rope_theta": 500.0})),
    "llama3_rope_mqa": ("LlamaConfig", dict(num_key_value_heads=1, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=1)),
    # A 3-token window on layers 0 and 2, so generation runs far past it; caps small enough
    # to bind on a random model; 24 != head_dim as in Gemma 2 27B.
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, sliding_window=3,
                                    query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=5.0)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=4)),
}


def _hf_model(arch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cls, kwargs = _ARCHS[arch]
  config = getattr(transformers, cls)(**_COMMON, **kwargs)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  gemma = config.model_type.startswith("gemma")
  # HF's init (std 0.02, unit norms) gives near-constant logits; fan-in-scaled weights and
  # perturbed norms make every part matter. Tied embeddings stay small so the head does not
  # just repeat the input token.
  with torch.no_grad():
    for name, p in model.named_parameters():  # a tied head appears once
      if "norm" in name:
        p.copy_((0.0 if gemma else 1.0) + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.3 * torch.randn_like(p))
      elif "embed_tokens" in name:
        std = (0.3 if config.tie_word_embeddings else 1.0) * (
            p.shape[1] ** -0.5 if gemma else 1.0)  # Gemma multiplies by sqrt(d) again
        p.copy_(std * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5)
  model.generation_config.eos_token_id = None  # generate all steps in every row
  return model


def _logits(hf, ids):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids)).logits.numpy()


def _greedy(model, params, right_padded, lengths, steps):
  last, cache = model.prefill(params, jnp.asarray(right_padded, jnp.int32),
                              jnp.asarray(lengths, jnp.int32), right_padded.shape[1] + steps)
  step = jax.jit(model.decode_block)
  tok, out = jnp.argmax(last, -1).astype(jnp.int32), []
  for _ in range(steps):
    out.append(np.asarray(tok))
    logits, cache = step(params, cache, tok[:, None])
    tok = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
  return np.stack(out, 1)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(_ARCHS))
def test_hf_import_matches_transformers_and_exports_back(tmp_path, arch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf = _hf_model(arch)
  # Sharded for one architecture, so model.safetensors.index.json is read too.
  hf.save_pretrained(str(tmp_path / "src"), max_shard_size="200KB" if arch == "gemma" else "1GB")
  assert (tmp_path / "src" / "model.safetensors.index.json").exists() == (arch == "gemma")
  params, config = hf_decoder.load_hf_decoder(str(tmp_path / "src"))
  assert config.family == hf.config.model_type
  model = DecoderOnlyModel(config)

  rng = np.random.default_rng(0)
  ids = rng.integers(3, 128, (3, 9))
  theirs = _logits(hf, ids)
  theirs64 = _logits(copy.deepcopy(hf).double(), ids)
  # transformers' own float32 error, measured against its float64 run.
  tol = max(TOL, float(np.abs(theirs - theirs64).max()))
  ours = np.asarray(jax.jit(model.forward)(params, jnp.asarray(ids, jnp.int32)))
  assert np.abs(theirs64).max() > 0.5  # not trivially small
  np.testing.assert_allclose(ours, theirs, atol=tol, rtol=0)
  np.testing.assert_allclose(ours, theirs64, atol=tol, rtol=0)

  # Greedy generation, prompts of lengths 9, 3, 6: HF left-pads, we right-pad.
  lengths, steps, width = np.array([9, 3, 6]), 10, 9
  left, mask = np.zeros_like(ids), np.zeros_like(ids)
  right = np.full_like(ids, 5)  # junk padding: must not matter
  for b, n in enumerate(lengths):
    left[b, width - n:], mask[b, width - n:], right[b, :n] = ids[b, :n], 1, ids[b, :n]
  with torch.no_grad():
    generated = hf.generate(input_ids=torch.tensor(left), attention_mask=torch.tensor(mask),
                            do_sample=False, num_beams=1, max_new_tokens=steps,
                            pad_token_id=0).numpy()[:, width:]
  greedy = _greedy(model, params, right, lengths, steps)
  np.testing.assert_array_equal(greedy, generated)
  assert max(len(set(row)) for row in greedy) > 2  # not one repeated token

  hf_decoder.export_hf_decoder(params, config, str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "out"), attn_implementation="eager").eval()
  assert type(reloaded) is type(hf)
  np.testing.assert_allclose(_logits(reloaded, ids), theirs, atol=1e-5, rtol=0)
