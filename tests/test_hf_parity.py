"""Side by side with transformers' T5: same weights → same logits and greedy outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from spec_cascade import checkpoints as C  # pylint: disable=g-import-not-at-top
from spec_cascade.models import T5Model  # pylint: disable=g-import-not-at-top

VOCAB = 128
LAYOUTS = {
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
}


def _hf_model(layout, seed=0):
  cfg = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
      num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
      dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
      **LAYOUTS[layout])
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  if layout == "v1.1":
    # transformers 5 ties lm_head to `shared` even for v1.1; give it its own
    # weights so the untied output layer is really exercised.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
  # HF's T5 init gives a tiny tied v1.0 model near-constant greedy outputs;
  # fan-in-scaled weights (norm scales near 1) make every layer matter.
  with torch.no_grad():
    for name, p in model.named_parameters():  # tied weights appear once
      if name.endswith("layer_norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif "relative_attention_bias" in name or name == "lm_head.weight":
        p.copy_(torch.randn_like(p))
      elif name == "shared.weight":
        # Small: a strong residual copy of the input embedding would make the tied
        # v1.0 head just repeat the previous token.
        p.copy_(0.2 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5)
  return model


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, VOCAB, (3, 9)).astype(np.int64)
  enc[1, 6:] = 0
  enc[2, 3:] = 0
  dec = rng.integers(2, VOCAB, (3, 6)).astype(np.int64)
  dec[:, 0] = 0
  return enc, dec


def _hf_logits(model, enc, dec):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                decoder_input_ids=torch.tensor(dec))
  return out.logits.numpy()


def _greedy(model: T5Model, params, enc, steps):
  """One token per decode_block call; finished rows emit padding, as HF does."""
  encoded, mask = model.encode(params, jnp.asarray(enc, jnp.int32))
  cache = model.init_cache(params, encoded, mask, steps + 1)
  step = jax.jit(model.decode_block)
  tokens = jnp.zeros((enc.shape[0], 1), jnp.int32)
  done = np.zeros(enc.shape[0], bool)
  out = []
  for t in range(steps):
    logits, cache = step(params, cache, tokens, jnp.full((enc.shape[0],), t, jnp.int32))
    nxt = np.where(done, 0, np.asarray(jnp.argmax(logits[:, -1], -1)))
    done |= nxt == 1
    out.append(nxt)
    tokens = jnp.asarray(nxt[:, None], jnp.int32)
  return np.stack(out, 1)


@pytest.mark.parametrize("layout", ["v1.1", "v1.0"])
def test_imported_hf_model_matches_transformers(tmp_path, layout):
  hf = _hf_model(layout)
  hf.save_pretrained(str(tmp_path))
  params, config = C.load_params(str(tmp_path))
  assert config.logits_via_embedding == (layout == "v1.0")
  assert config.mlp_activations == (("gelu", "linear") if layout == "v1.1" else ("relu",))
  model = T5Model(config)
  enc, dec = _inputs()
  ours = np.asarray(jax.jit(model.forward)(params, jnp.asarray(enc, jnp.int32),
                                           jnp.asarray(dec, jnp.int32)))
  theirs = _hf_logits(hf, enc, dec)
  assert np.abs(theirs).max() > 0.5  # not trivially small
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

  steps = 10
  with torch.no_grad():
    generated = hf.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                            do_sample=False, num_beams=1, max_new_tokens=steps,
                            min_new_tokens=0,
                            # transformers 5.24's decoder cache assumes as many decoder
                            # as encoder layers (IndexError otherwise): decode uncached.
                            use_cache=False).numpy()[:, 1:]  # drop decoder start
  greedy = _greedy(model, params, enc, steps)
  np.testing.assert_array_equal(greedy[:, :generated.shape[1]], generated)
  assert (greedy[:, generated.shape[1]:] == 0).all()
  assert len(set(map(tuple, greedy))) > 1  # rows differ: the encoder matters
  assert max(len(set(row)) for row in greedy) > 2  # not one repeated token


@pytest.mark.parametrize("layout", ["v1.1", "v1.0"])
def test_exported_params_load_in_transformers(tmp_path, layout):
  hf = _hf_model(layout, seed=3)
  hf.save_pretrained(str(tmp_path / "src"))
  params, config = C.load_params(str(tmp_path / "src"))
  C.export_hf(params, config, str(tmp_path / "out"))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
  enc, dec = _inputs(1)
  np.testing.assert_allclose(_hf_logits(reloaded, enc, dec), _hf_logits(hf, enc, dec),
                             atol=1e-5, rtol=0)
