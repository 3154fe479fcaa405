"""Our engine vs Hugging Face transformers on the same weights, inputs and greedy decoding.

    python bench/hf_peer.py [--batches 1,8,32] [--gamma 5] [--max_new_tokens 64]
                            [--input_len 64] [--trials 3] [--noise 0.02]

One invocation, one process, everything side by side:

* a drafter shaped like `tiny` (d128, 2+2 layers) and a verifier shaped like `mini`
  (d256, 4+4), vocab 4224, equal encoder/decoder layer counts (transformers 5.24's cached
  generate needs them equal). The verifier embeds the drafter exactly (zero-padded widths,
  identity extra layers) plus `noise` × a fresh random init, so the two agree on most greedy
  tokens without being the same function; see `embed_drafter`;
* both are written with `checkpoints.export_hf`, loaded by
  `transformers.T5ForConditionalGeneration`, and read back with `checkpoints.load_params`
  (our engine runs on the round-tripped weights);
* verifier alone: our `generate(method='verifier')` vs HF `generate()` at every batch size;
* speculative: our `generate(method='spec_decode')` at every batch size vs HF
  `generate(assistant_model=drafter)` at batch 1 (HF's assisted generation is batch 1 only),
  with HF's draft length fixed to γ (constant schedule, no confidence early stop);
* every output is compared token for token with HF greedy (up to and including EOS); any
  difference raises SystemExit (the benchmark fails loudly);
* the analytic speed-up bound of our SpecDecode over our verifier-alone decoding,

      bound = E[tokens/block] · t_v / (γ · t_d(1) + t_v(γ + 1)),
      E[tokens/block] = (1 − a^(γ+1)) / (1 − a),

  (paper §2: γ drafter steps and one verifier call per block) from the measured acceptance
  rate a (accepted drafts / acceptance tests, `acceptance_rate`), per-call costs measured
  inside a compiled loop at the same batch size and cache length (t_d(1) drafter step, t_v(k)
  verifier call scoring k tokens), and t_v = the measured step of our verifier-alone decoding
  (its decode phase / steps), the baseline itself; efficiency = speed-up / bound is then the
  time SpecDecode's loop would take if it paid only for its model calls over the time it takes.
  (t_v(1) from a call loop is printed too, with the bounds it would give.) That bound is per
  row: a batch decoded in lockstep runs until its slowest row is done, so the benchmark also
  reports the batch bound
  (`batch_bound`: the same costs and a, with the expected maximum over rows of the blocks each
  row needs, from the i.i.d. block model, in place of tokens / E[tokens/block]): what a
  lockstep loop could reach. The engine shrinks a batch of ≥ 16 to a quarter once that few rows
  are left (`decoding.stage_sizes`), so its tail blocks cost less than the batch bound assumes;
  SpecDecode with `shrink_batch=False` is timed too ("spec lockstep / spec shrinking"). The bounds
  model the decode loop, not the encoders, so they are compared with the decode-phase speed-up
  (T_verifier − E_v) / (T_spec − E_v − E_d), where E_v, E_d are each model's encoder plus
  cross-attention cache; efficiency = decode-phase speed-up / bound. The end-to-end speed-up
  (encoders included) is reported too, and "model calls / block time": one block's model
  calls run alternately in a compiled loop (no verification, no bookkeeping) over our measured
  decode-loop time per block, i.e. the share of a block spent in model calls.

Then, per batch size ≥ 2, a stream of `--stream` batches' worth of examples: ours decodes it
`batch` rows at a time with continuous batching (`generate(slots=batch)`), HF one batch after
another; ours are also timed one batch after another ("in batches / streamed"). A stream has no batch-wide straggler: its speed-up is the one to hold against the
per-row bound.

Timings are medians of interleaved rounds after one warm-up call each (compilation and HF's
first-call overheads excluded), in two sets per batch size: ours vs HF (`--trials` rounds, each
of our runs right after one of HF's), and our SpecDecode vs our verifier with the encoders and
the per-call cost loops (`--ours_trials` rounds, no torch run in between: a run right after a
torch run is slower, SpecDecode more than the verifier). The machine is shared, so read the
ratios, not the ms.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import tempfile

import flax
import jax
import jax.numpy as jnp
import numpy as np

# torch's OpenMP threads spin-wait between ops by default; sharing two cores with XLA's
# threads that made HF generate 20x slower (250-330 ms/step at batch 1 instead of ~12).
# Passive waiting is HF's best case here, so the comparison is conservative for us.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
# pylint: disable=g-import-not-at-top
from spec_cascade import checkpoints, costs, decoding, hf_decoder
from spec_cascade.decoding import EOS_ID, PAD_ID, Bundle, contract, generate
from spec_cascade.models import T5Model, get_config
# pylint: enable=g-import-not-at-top

Params = dict


# ----------------------------------------------------------------------------------------------
# The synthetic pair (pure helpers, also used by bench/engine_speedup.py and the smoke test)

def _place(dst: np.ndarray, src: np.ndarray, path: str, heads: int) -> np.ndarray:
  """Writes drafter array `src` into the zero verifier array `dst` so the wider verifier
  computes the same function on the leading dimensions. Attention kernels are per head:
  head h's Dd columns land in the first Dd of head h's Dv columns."""
  out = dst.copy()
  if path.endswith(("query/kernel", "key/kernel", "value/kernel")):
    dd, dv = src.shape[1] // heads, dst.shape[1] // heads
    o = out.reshape(dst.shape[0], heads, dv)
    o[:src.shape[0], :, :dd] = src.reshape(src.shape[0], heads, dd)
    return o.reshape(dst.shape)
  if path.endswith("out/kernel"):
    dd, dv = src.shape[0] // heads, dst.shape[0] // heads
    o = out.reshape(heads, dv, dst.shape[1])
    o[:, :dd, :src.shape[1]] = src.reshape(heads, dd, src.shape[1])
    return o.reshape(dst.shape)
  out[tuple(slice(0, n) for n in src.shape)] = src
  return out


def check_embeddable(what: str, d_cfg, v_cfg, equal: tuple[str, ...],
                     at_least: tuple[str, ...]) -> None:
  """ValueError unless drafter config d_cfg and verifier config v_cfg agree on every field in
  `equal` and the verifier's is ≥ the drafter's on every field in `at_least`."""
  for f in equal:
    if getattr(d_cfg, f) != getattr(v_cfg, f):
      raise ValueError(f"{what} needs equal {f}: drafter {getattr(d_cfg, f)!r}, "
                       f"verifier {getattr(v_cfg, f)!r}.")
  for f in at_least:
    if getattr(v_cfg, f) < getattr(d_cfg, f):
      raise ValueError(f"{what} needs verifier {f} ≥ drafter's "
                       f"({getattr(v_cfg, f)} < {getattr(d_cfg, f)}).")


def embed_drafter(d_params: Params, d_cfg, v_cfg) -> Params:
  """Verifier params [v_cfg] that compute exactly the drafter's function [d_cfg].

  Widths are zero-padded (model, head and MLP dims), the drafter's layers fill the first
  verifier layers and the extra layers are zero (identity residual blocks). RMSNorm scales
  get sqrt(d_drafter / d_verifier): the padded residual stream has the same sum of squares
  over more dimensions. Needs equal heads and vocab and verifier sizes ≥ drafter sizes.
  """
  check_embeddable("embed_drafter", d_cfg, v_cfg,
                   equal=("num_heads", "vocab_size", "relpos_num_buckets", "mlp_activations",
                          "logits_via_embedding"),
                   at_least=("emb_dim", "head_dim", "mlp_dim", "num_encoder_layers",
                             "num_decoder_layers"))
  norm = float(np.sqrt(d_cfg.emb_dim / v_cfg.emb_dim))
  d_flat = flax.traverse_util.flatten_dict(d_params, sep="/")
  abstract = flax.traverse_util.flatten_dict(T5Model(v_cfg).abstract_params(), sep="/")
  v_flat = {}
  for path, shape in abstract.items():
    if path.endswith("/scale"):
      v_flat[path] = np.full(shape.shape, norm, np.float32)
      if path in d_flat:
        v_flat[path][:d_cfg.emb_dim] = np.asarray(d_flat[path]) * norm
      continue
    zero = np.zeros(shape.shape, np.float32)
    v_flat[path] = (_place(zero, np.asarray(d_flat[path]), path, d_cfg.num_heads)
                    if path in d_flat else zero)
  return flax.traverse_util.unflatten_dict(v_flat, sep="/")


def perturb(params: Params, model: T5Model, noise: float, seed: int) -> Params:
  """params + noise × a fresh random init (norm scales untouched)."""
  fresh = flax.traverse_util.flatten_dict(model.init_params(jax.random.key(seed)), sep="/")
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  out = {k: (v if k.endswith("/scale") else np.asarray(v) + noise * np.asarray(fresh[k]))
         for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(out, sep="/")


def synthetic_pair(noise: float = 0.02, seed: int = 0, eos_gain: float = 1.0,
                   vocab: int = 4224):
  """(drafter, verifier) Bundles: tiny-shaped d128 2+2 and mini-shaped d256 4+4."""
  d_cfg = get_config("tiny").replace(vocab_size=vocab)
  v_cfg = get_config("mini").replace(vocab_size=vocab)
  d_model, v_model = T5Model(d_cfg), T5Model(v_cfg)
  d_params = jax.tree_util.tree_map(np.array, d_model.init_params(jax.random.key(seed)))
  if eos_gain != 1.0:  # EOS more likely: rows end at different lengths
    d_params["decoder"]["logits_dense"]["kernel"][:, EOS_ID] *= eos_gain
  v_params = perturb(embed_drafter(d_params, d_cfg, v_cfg), v_model, noise, seed + 1)
  return Bundle(d_model, d_params), Bundle(v_model, v_params)


def random_inputs(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
  """int32 [batch, length] token ids ≥ 2, row r padded (0) after a random length ≥ length/2."""
  rng = np.random.default_rng(seed)
  x = rng.integers(2, vocab, (batch, length)).astype(np.int32)
  for r in range(batch):
    x[r, rng.integers(length // 2, length + 1):] = PAD_ID
  return x


def until_eos(row: np.ndarray, eos: int = EOS_ID) -> np.ndarray:
  """A generated row up to and including its first EOS (the whole row if none)."""
  hit = np.flatnonzero(row == eos)
  return row[:hit[0] + 1] if hit.size else row


def mismatches(ours: np.ndarray, lengths: np.ndarray, theirs: np.ndarray,
               eos: int = EOS_ID) -> list[str]:
  """Rows where our tokens [B, L] (first lengths[b] valid) differ from HF's [B, T] (decoder
  start or prompt dropped, padding after EOS): each compared up to and including EOS."""
  bad = []
  for b in range(ours.shape[0]):
    a, h = ours[b, :lengths[b]], until_eos(theirs[b], eos)
    if not np.array_equal(a, h):
      n = min(len(a), len(h))
      first = int(np.argmax(a[:n] != h[:n])) if np.any(a[:n] != h[:n]) else n
      bad.append(f"row {b}: ours {len(a)} tokens, HF {len(h)}; first difference at {first}: "
                 f"ours {a[first:first + 4].tolist()} HF {h[first:first + 4].tolist()}")
  return bad


def expected_tokens(a: float, gamma: int) -> float:
  """(1 − a^(γ+1)) / (1 − a): expected tokens per block at acceptance rate a."""
  return float(sum(a ** i for i in range(gamma + 1)))


def acceptance_rate(counters) -> float:
  """The per-draft acceptance probability a of the i.i.d. model behind the bound: accepted
  drafts / acceptance tests made. A block tests drafts until its first rejection, so the tests
  are the accepted drafts plus one per rejected block (accepted / drafted would count untested
  drafts as rejections and understate a)."""
  accepted = float(counters["accepted"].sum())
  return accepted / max(accepted + float(counters["rejected"].sum()), 1.0)


def analytic_bound(a: float, gamma: int, t_d1: float, t_v1: float, t_vk: float) -> float:
  """Speed-up over verifier-alone decoding if only model calls cost anything: γ drafter
  steps and one verifier call scoring γ + 1 tokens per block (paper §2)."""
  return expected_tokens(a, gamma) * t_v1 / (gamma * t_d1 + t_vk)


def blocks_cdf(a: float, gamma: int, n_tokens: int) -> np.ndarray:
  """P(a row has committed its n_tokens within n blocks), n = 0..n_tokens: float [n_tokens + 1].

  The i.i.d. model of the bound: a block emits t tokens with probability a^(t−1)(1 − a) for
  t ≤ γ and a^γ for t = γ + 1 (every draft accepted plus the bonus token), and the row stops
  at n_tokens (the last block may be cut short). Each block emits ≥ 1 token, so n_tokens
  blocks always suffice.
  """
  if n_tokens == 0:
    return np.ones(1)
  emit = np.array([a ** (t - 1) * (1 - a) for t in range(1, gamma + 1)] + [a ** gamma])
  alive = np.zeros(n_tokens)  # alive[m]: P(not done, m tokens committed so far)
  alive[0] = 1.0
  cdf = [0.0]
  for _ in range(n_tokens):
    nxt = np.zeros(n_tokens)
    for t, p in enumerate(emit, start=1):
      nxt[t:] += p * alive[:n_tokens - t]
    alive = nxt
    cdf.append(1.0 - alive.sum())
  return np.clip(np.array(cdf), 0.0, 1.0)


def expected_max_blocks(a: float, gamma: int, lengths) -> float:
  """E[max over rows of the blocks a row needs] for rows of output lengths `lengths` [B]:
  the loop runs until its slowest row is done, so this is the batch's block count."""
  lengths = [int(n) for n in lengths]
  horizon = max(lengths)
  prob_all_done = np.ones(horizon + 1)
  for n in lengths:
    cdf = blocks_cdf(a, gamma, n)
    prob_all_done *= np.concatenate([cdf, np.ones(horizon - n)])
  return float(np.sum(1.0 - prob_all_done[:-1]))


def batch_bound(a: float, gamma: int, lengths, t_d1: float, t_v1: float, t_vk: float) -> float:
  """The bound for a batch decoded in lockstep: verifier-alone decoding takes max(lengths)
  steps, SpecDecode E[max over rows of blocks] blocks (`expected_max_blocks`), each block
  costing γ·t_d(1) + t_v(γ + 1). At batch 1 this is the paper's bound without its
  renewal approximation (the last block of a row is cut at the row's length)."""
  return (max(int(n) for n in lengths) * t_v1
          / (expected_max_blocks(a, gamma, lengths) * (gamma * t_d1 + t_vk)))


# ----------------------------------------------------------------------------------------------
# Measurements

CALL_ITERS = 24   # model calls per timed run of a per-call cost loop
BLOCK_ITERS = 8   # blocks per timed run of `block_call_loop`

def loop_call_cost(bundle: Bundle, inputs: np.ndarray, k: int, iters: int = 24,
                   reps: int = 3, cache_len: int = 96) -> float:
  """Seconds per decode_block call scoring k tokens inside one compiled loop, as the decode
  loop pays it: (T(iters calls) − T(set-up)) / iters, interleaved `reps` times
  (`costs.call_loop`)."""
  _, t = costs.interleaved({"loop": costs.call_loop(bundle, inputs, k, cache_len, iters),
                            "setup": costs.call_loop(bundle, inputs, k, cache_len, 0)}, reps)
  return costs.per_call_seconds(t["loop"], t["setup"], iters)


def block_call_loop(drafter: Bundle, verifier: Bundle, inputs: np.ndarray, gamma: int,
                    iters: int = 8, cache_len: int = 96, with_verifier: bool = True):
  """A function running both encoders and then `iters` blocks' model calls alone, in one
  compiled program (compiled and warmed up here; time it, subtract the encoders' set-up
  (`costs.call_loop` with iters = 0) and divide by iters). A block's calls are SpecDecode's:
  drafter calls (one scoring two tokens, γ − 1 scoring one: `decoding.bodies._speculative_body`),
  then one verifier call scoring γ + 1 tokens. Unlike the isolated per-call costs this
  includes what alternating two models costs (each evicts the other's weights from the CPU
  caches), so the decode loop's own overhead is what remains on top of it. with_verifier=False
  runs the drafter's calls alone (their cost in the block's pattern, without alternation)."""
  batch = inputs.shape[0]

  @jax.jit
  def run(d_params, v_params, inputs):
    caches = [b.model.init_cache(p, *b.model.encode(p, inputs), cache_len)
              for b, p in ((drafter, d_params), (verifier, v_params))]

    def body(i, carry):
      d_cache, v_cache, tok = carry
      offs = jnp.full((batch,), 8, jnp.int32) + (i % 8) * (gamma + 1)
      logits, d_cache = drafter.model.decode_block(
          d_params, d_cache, jnp.concatenate([tok, tok + 1], axis=1), offs - 1)
      tok = (logits[:, 1:, 0] > 0).astype(jnp.int32) + 2
      toks = [tok]
      for j in range(1, gamma):
        logits, d_cache = drafter.model.decode_block(d_params, d_cache, tok, offs + j)
        tok = (logits[..., 0] > 0).astype(jnp.int32) + 2
        toks.append(tok)
      if not with_verifier:
        return d_cache, v_cache, tok
      logits, v_cache = verifier.model.decode_block(
          v_params, v_cache, jnp.concatenate([tok + 1] + toks, axis=1), offs)
      return d_cache, v_cache, (logits[:, :1, 0] > 0).astype(jnp.int32) + 2
    d_cache, v_cache, tok = jax.lax.fori_loop(0, iters, body,
                                              (*caches, jnp.ones((batch, 1), jnp.int32)))
    # The caches are returned so that the set-up is never optimised away.
    return tok, jax.tree_util.tree_map(lambda c: c.ravel()[0], (d_cache, v_cache))

  args = (drafter.params, verifier.params, jnp.asarray(inputs))
  jax.block_until_ready(run(*args))
  return lambda: jax.block_until_ready(run(*args))


def hf_models(drafter: Bundle, verifier: Bundle, workdir: str, device: str = "cpu"):
  """Exports both, loads them in transformers and reads them back for us: {'drafter' |
  'verifier': (HF model, our Bundle)}. T5 goes through checkpoints.export_hf /
  T5ForConditionalGeneration / checkpoints.load_params, a decoder-only model through
  hf_decoder.export_hf_decoder / AutoModelForCausalLM / hf_decoder.load_hf_decoder."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  out = {}
  for name, b in (("drafter", drafter), ("verifier", verifier)):
    path = os.path.join(workdir, name)
    if contract.is_decoder_only(b.model):
      hf_decoder.export_hf_decoder(b.params, b.model.config, path)
      hf_class, (params, config) = (transformers.AutoModelForCausalLM,
                                    hf_decoder.load_hf_decoder(path))
    else:
      checkpoints.export_hf(b.params, b.model.config, path)
      hf_class, (params, config) = (transformers.T5ForConditionalGeneration,
                                    checkpoints.load_params(path))
    hf = hf_class.from_pretrained(path).eval().to(device)
    out[name] = (hf, Bundle(contract.model_for(config), params))
  del torch
  return out


def left_padded(prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded prompts [B, S] → (the same prompts left-padded [B, S'], attention mask
  [B, S']), S' the longest prompt: HF's layout for a batch of decoder-only prompts (each real
  token keeps its position and context)."""
  lengths = (prompts != PAD_ID).sum(1)
  width = int(lengths.max())
  ids, mask = np.zeros((len(prompts), width), np.int64), np.zeros((len(prompts), width), np.int64)
  for b, n in enumerate(lengths):
    ids[b, width - n:], mask[b, width - n:] = prompts[b, :n], 1
  return ids, mask


def hf_generate(model, inputs: np.ndarray, max_new_tokens: int, assistant=None,
                gamma: int = 5, eos: int = EOS_ID) -> np.ndarray:
  """HF greedy generate (optionally assisted) of our inputs [B, S] (T5: encoder ids;
  decoder-only: right-padded prompts, left-padded for HF): the new tokens [B, T],
  T ≤ max_new_tokens (no decoder start, no prompt), PAD after a row's EOS."""
  import torch  # pylint: disable=g-import-not-at-top
  kw = dict(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
            eos_token_id=eos, pad_token_id=PAD_ID, repetition_penalty=1.0,
            no_repeat_ngram_size=0, use_cache=True)
  if assistant is not None:
    g = assistant.generation_config
    g.num_assistant_tokens = gamma
    g.num_assistant_tokens_schedule = "constant"
    g.assistant_confidence_threshold = 0.0
    kw["assistant_model"] = assistant
  if model.config.is_encoder_decoder:
    ids, mask = inputs, inputs != PAD_ID
    skip = 1  # the decoder start
    kw["decoder_start_token_id"] = 0
  else:
    ids, mask = left_padded(inputs)
    skip = ids.shape[1]  # the prompts
  tensor = lambda a: torch.tensor(a, dtype=torch.long, device=model.device)
  with torch.inference_mode():
    out = model.generate(input_ids=tensor(ids), attention_mask=tensor(mask), **kw)
  return out.cpu().numpy()[:, skip:]  # .cpu() waits for a GPU to finish


def check_same(what: str, ours, theirs: np.ndarray) -> None:
  bad = mismatches(ours.tokens, ours.lengths, theirs)
  if bad:
    raise SystemExit(f"FAIL ({what}): our greedy output differs from transformers' in "
                     f"{len(bad)} row(s):\n  " + "\n  ".join(bad[:5]))


def stream_calls(drafter: Bundle, verifier: Bundle, inputs: np.ndarray, rows: int, gamma: int,
                 extra: dict | None = None, **kw) -> dict:
  """Our verifier and SpecDecode (γ = gamma), and each `extra` {name: generate kwargs}, over
  inputs [N, S], `rows` rows at a time, two ways: '<name> stream' is one
  `generate(slots=rows)` call (continuous batching), '<name> batches' one call per consecutive
  batch of `rows`. Each value is a callable returning the list of GenerateOutputs, in input
  order; kw goes to every `generate` call."""
  batches = [inputs[i:i + rows] for i in range(0, len(inputs), rows)]
  methods = {"verifier": dict(method="verifier"),
             "spec": dict(method="spec_decode", num_draft_tokens=gamma), **(extra or {})}
  calls = {}
  for name, m in methods.items():
    calls[f"{name} stream"] = lambda m=m: [generate(drafter, verifier, inputs, slots=rows,
                                                    **m, **kw)]
    calls[f"{name} batches"] = lambda m=m: [generate(drafter, verifier, b, **m, **kw)
                                            for b in batches]
  return calls


def stream_table(args, drafter: Bundle, verifier: Bundle, hf_v, rows) -> None:
  """Decoding a stream of examples (`--stream` batches' worth) with `batch` rows at a time:
  ours with continuous batching (`generate(slots=batch)`: a finished row's slot takes the next
  example at once) vs HF generate() over consecutive batches; our SpecDecode also over
  consecutive batches. Prints one table row per batch size ≥ 2 of `rows`."""
  gamma, steps = args.gamma, args.max_new_tokens
  kw = dict(temperature=0.0, max_decode_length=steps)
  vocab = verifier.model.config.vocab_size
  print(f"\nA stream of {args.stream} batches' worth of examples, `batch` rows at a time "
        "(ours: continuous batching; HF and 'spec in batches': one batch after another):\n")
  print("| batch | examples | HF greedy s | ours verifier s | ours / HF | ours spec s "
        "| verifier in batches / streamed | spec in batches / streamed "
        "| spec / ours verifier (end to end) | spec / ours verifier (decode phase) "
        "| bound, per row (paper) | efficiency, per row |")
  print("|" + "---|" * 12)
  for row in rows:
    batch = row["batch"]
    if batch < 2:
      continue
    xs = random_inputs(batch * args.stream, args.input_len, vocab, args.seed + 1000 + batch)
    chunks = [xs[i:i + batch] for i in range(0, len(xs), batch)]
    calls = stream_calls(drafter, verifier, xs, batch, gamma, **kw)
    ours_v, ours_s = calls["verifier stream"], calls["spec stream"]
    hf_out, th = costs.interleaved(
        {"hf": lambda: [hf_generate(hf_v, c, steps) for c in chunks], "ours_v": ours_v},
        args.trials)
    cache_len = steps + gamma + 2
    out, t = costs.interleaved(
        {"ours_v": ours_v, "ours_s": ours_s, "in_batches": calls["spec batches"],
         "v_in_batches": calls["verifier batches"],
         "enc_v": costs.call_loop(verifier, xs, 1, cache_len, 0),
         "enc_d": costs.call_loop(drafter, xs, 1, cache_len, 0)}, args.ours_trials)
    for name in ("ours_v", "ours_s"):
      whole = out[name][0]
      for i, theirs in enumerate(hf_out["hf"]):
        part = slice(i * batch, (i + 1) * batch)
        check_same(f"{name} streamed, batch {batch}, examples {i * batch}..",
                   dataclasses.replace(whole, tokens=whole.tokens[part],
                                       lengths=whole.lengths[part]), theirs)
    loop_v = t["ours_v"] - t["enc_v"]
    loop_s = t["ours_s"] - t["enc_v"] - t["enc_d"]
    speedup_loop = loop_v / loop_s
    print(f"| {batch} | {len(xs)} | {th['hf']:.2f} | {t['ours_v']:.2f} | "
          f"{th['hf'] / th['ours_v']:.2f}× | {t['ours_s']:.2f} | "
          f"{t['v_in_batches'] / t['ours_v']:.2f} | {t['in_batches'] / t['ours_s']:.2f} | {t['ours_v'] / t['ours_s']:.2f}× | "
          f"{speedup_loop:.2f}× | {row['bound']:.2f} | {speedup_loop / row['bound']:.2f} |",
          flush=True)


def add_torch_flags(parser: argparse.ArgumentParser) -> None:
  """--threads and --device, for every benchmark that runs transformers beside us."""
  parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                      help="cuda: both frameworks on the GPU (jax must see one), float32 "
                      "matmuls at full precision in both (no TF32) so outputs can match")


def start_torch(args, script: str, argv) -> None:
  """Sets torch's threads and, for --device cuda, both frameworks' matmul precision; quiets
  transformers; prints the run's header (machine, versions, command line, devices)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  if args.device == "cuda":
    if jax.default_backend() != "gpu" or not torch.cuda.is_available():
      raise SystemExit(f"--device cuda needs a GPU for jax (backend: {jax.default_backend()}) "
                       f"and torch (cuda available: {torch.cuda.is_available()}).")
    # Both default to float32 matmuls without TF32 only if asked: jax's default on GPU may
    # use TF32, which changes greedy outputs.
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs (load average "
        f"{os.getloadavg()[0]:.1f}); OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; Python "
        f"{platform.python_version()}; jax {jax.__version__}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); transformers {transformers.__version__}")
  print(f"# command: python {script} {' '.join(sys.argv[1:] if argv is None else argv)}")
  print(f"# device: jax {jax.devices()[0].device_kind}; torch "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--gamma", type=int, default=5)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--input_len", type=int, default=64)
  parser.add_argument("--trials", type=int, default=3,
                      help="interleaved rounds of ours vs HF")
  parser.add_argument("--ours_trials", type=int, default=7,
                      help="interleaved rounds of our SpecDecode vs our verifier (and encoders)")
  parser.add_argument("--noise", type=float, default=0.02)
  parser.add_argument("--eos_gain", type=float, default=1.0)
  parser.add_argument("--stream", type=int, default=4,
                      help="batches ≥ 2 also decode a stream of this many batches' worth of "
                      "examples through `batch` rows (continuous batching; 0: skip)")
  parser.add_argument("--seed", type=int, default=0)
  add_torch_flags(parser)
  args = parser.parse_args(argv)
  start_torch(args, "bench/hf_peer.py", argv)
  gamma, steps = args.gamma, args.max_new_tokens
  drafter, verifier = synthetic_pair(args.noise, args.seed, args.eos_gain)
  with tempfile.TemporaryDirectory() as tmp:
    models = hf_models(drafter, verifier, tmp, args.device)
  hf_d, drafter = models["drafter"]
  hf_v, verifier = models["verifier"]
  vocab = verifier.model.config.vocab_size
  print(f"# drafter {drafter.model.num_params() / 1e6:.2f}M params (d128, 2+2), verifier "
        f"{verifier.model.num_params() / 1e6:.2f}M (d256, 4+4), vocab {vocab}; greedy; "
        f"γ={gamma}; inputs ≤{args.input_len} tokens; max_new_tokens={steps}; "
        f"noise={args.noise}; median of {args.trials} after a warm-up")
  kw = dict(temperature=0.0, max_decode_length=steps)
  # The cache lengths the loops use (decoding.decode: max length + block width + 1), so the
  # per-call costs attend over as many positions as the real calls do: SpecDecode's for t_d(1)
  # and t_v(γ+1), verifier-alone decoding's for t_v(1) (the step the bound's numerator stands
  # for).
  cache_len = steps + gamma + 2
  cache_len_v = steps + 2
  rows = []
  print("\n| batch | tokens | HF greedy ms/step | ours verifier ms/step | ours / HF "
        "| ours spec ms/block | accept a | tok/block | blocks (max / expected max / mean) "
        "| spec / ours verifier (end to end) | spec / ours verifier (decode phase) "
        "| bound, per row (paper) | efficiency, per row | bound, batch "
        "| efficiency, batch | model calls / block time | spec lockstep / spec shrinking "
        "| HF assisted / HF greedy | ours spec / HF assisted |")
  print("|" + "---|" * 19)
  for batch in (int(b) for b in args.batches.split(",")):
    x = random_inputs(batch, args.input_len, vocab, args.seed + batch)
    ours_v = lambda: generate(drafter, verifier, x, method="verifier", **kw)
    ours_s = lambda: generate(drafter, verifier, x, method="spec_decode", num_draft_tokens=gamma,
                              **kw)
    # Two interleaved sets. Ours vs HF: each of our runs right after one of HF's. Ours vs
    # ours (the speed-up and its bound): our runs only, like the per-call costs of the bound,
    # because a run that follows a torch run is slowed down (spec_decode more than the
    # verifier: 66 vs 49-51 ms at batch 1, measured in one process) and that would be
    # charged to the engine.
    hf_fns = {"hf": lambda: hf_generate(hf_v, x, steps), "ours_v": ours_v}
    if batch == 1:
      hf_fns.update(hf_a=lambda: hf_generate(hf_v, x, steps, hf_d, gamma), ours_s=ours_s)
    hf_out, th = costs.interleaved(hf_fns, args.trials)
    # The per-call costs of the bound run in the same rounds: each loop program encodes and
    # then makes CALL_ITERS calls; the set-up alone (iters = 0) is each model's encoder and
    # cache, E_v / E_d, also subtracted from the decode times for the decode-phase speed-up.
    # SpecDecode as a lockstep batch (shrink_batch=False) too, where the engine shrinks it.
    lockstep = {}
    if len(decoding.stage_sizes(batch, True)) > 1:
      lockstep["ours_s_lock"] = lambda: generate(drafter, verifier, x, method="spec_decode",
                                                 num_draft_tokens=gamma, shrink_batch=False,
                                                 **kw)
    out, t = costs.interleaved({"ours_v": ours_v, "ours_s": ours_s, **lockstep,
                          "enc_v": costs.call_loop(verifier, x, 1, cache_len, 0),
                          "enc_d": costs.call_loop(drafter, x, 1, cache_len, 0),
                          "d1": costs.call_loop(drafter, x, 1, cache_len, CALL_ITERS),
                          "enc_v1": costs.call_loop(verifier, x, 1, cache_len_v, 0),
                          "v1": costs.call_loop(verifier, x, 1, cache_len_v, CALL_ITERS),
                          "vk": costs.call_loop(verifier, x, gamma + 1, cache_len, CALL_ITERS),
                          "block": block_call_loop(drafter, verifier, x, gamma, BLOCK_ITERS,
                                                   cache_len),
                          "drafts": block_call_loop(drafter, verifier, x, gamma, BLOCK_ITERS,
                                                    cache_len, with_verifier=False)},
                         args.ours_trials)
    v_out, hf_tok, s_out = out["ours_v"], hf_out["hf"], out["ours_s"]
    t_ours_v, t_ours_s = t["ours_v"], t["ours_s"]
    check_same(f"verifier alone, batch {batch}", v_out, hf_tok)
    check_same(f"SpecDecode, batch {batch}", s_out, hf_tok)
    if lockstep:
      check_same(f"SpecDecode lockstep, batch {batch}", out["ours_s_lock"], hf_tok)
    hf_assisted = t_hf_a = None
    if batch == 1:
      check_same("HF assisted generation (vs ours)", s_out, hf_out["hf_a"])
      t_hf_a = th["hf_a"]
      hf_assisted = th["hf"] / t_hf_a
    c = s_out.counters
    a = acceptance_rate(c)
    tok_per_block = float(c["output_tokens"].sum() / c["blocks"].sum())
    t_d1 = costs.per_call_seconds(t["d1"], t["enc_d"], CALL_ITERS)
    t_v1 = costs.per_call_seconds(t["v1"], t["enc_v1"], CALL_ITERS)
    t_vk = costs.per_call_seconds(t["vk"], t["enc_v"], CALL_ITERS)
    t_block = costs.per_call_seconds(t["block"], t["enc_v"] + t["enc_d"], BLOCK_ITERS)
    t_drafts = costs.per_call_seconds(t["drafts"], t["enc_v"] + t["enc_d"], BLOCK_ITERS)
    lengths = v_out.lengths
    speedup = t_ours_v / t_ours_s
    loop_v = t_ours_v - t["enc_v"]
    loop_s = t_ours_s - t["enc_v"] - t["enc_d"]
    speedup_loop = loop_v / loop_s
    v_steps = int(v_out.counters["blocks"].max())
    # The bounds' verifier step is the measured step of our verifier-alone decoding (decode
    # phase / steps): the baseline the speed-up is measured against. Efficiency is then the
    # time SpecDecode's loop would take if it paid only for its model calls over the time it
    # takes. (t_v(1) from a call loop ran 3-10 % above the real step; with it the bounds
    # would promise more than any loop could reach against this baseline.)
    t_v_step = loop_v / v_steps
    bound = analytic_bound(a, gamma, t_d1, t_v_step, t_vk)
    bound_batch = batch_bound(a, gamma, lengths, t_d1, t_v_step, t_vk)
    bounds_call_loop = (analytic_bound(a, gamma, t_d1, t_v1, t_vk),
                        batch_bound(a, gamma, lengths, t_d1, t_v1, t_vk))
    blocks = int(s_out.counters["blocks"].max())
    tokens = int(lengths.sum())
    row = dict(batch=batch, tokens=tokens, hf_ms=th["hf"] / v_steps * 1e3,
               ours_ms=t_ours_v / v_steps * 1e3, ours_vs_hf=th["hf"] / th["ours_v"],
               spec_ms=t_ours_s / blocks * 1e3, a=a, tok_per_block=tok_per_block,
               spec_speedup=speedup, spec_speedup_loop=speedup_loop, bound=bound,
               efficiency=speedup_loop / bound, bound_batch=bound_batch,
               efficiency_batch=speedup_loop / bound_batch, blocks=blocks,
               blocks_expected=expected_max_blocks(a, gamma, lengths),
               blocks_mean=float(s_out.counters["blocks"].mean()),
               loop_share=t_block / (loop_s / blocks), hf_assisted=hf_assisted,
               shrink_gain=t["ours_s_lock"] / t_ours_s if lockstep else None,
               spec_vs_hf_assisted=None if t_hf_a is None else t_hf_a / th["ours_s"],
               t_d1=t_d1, t_v1=t_v1, t_v_step=t_v_step, bounds_call_loop=bounds_call_loop,
               t_vk=t_vk, t_block=t_block, t_drafts=t_drafts, enc_v=t["enc_v"],
               enc_d=t["enc_d"])
    rows.append(row)
    fmt = lambda v, f="{:.2f}": "–" if v is None else f.format(v)
    print(f"| {batch} | {tokens} | {row['hf_ms']:.2f} | {row['ours_ms']:.2f} | "
          f"{row['ours_vs_hf']:.2f}× | {row['spec_ms']:.2f} | {a:.2f} | {tok_per_block:.2f} | "
          f"{blocks} / {row['blocks_expected']:.1f} / {row['blocks_mean']:.1f} | "
          f"{speedup:.2f}× | {speedup_loop:.2f}× | {bound:.2f} | {row['efficiency']:.2f} | "
          f"{bound_batch:.2f} | {row['efficiency_batch']:.2f} | {row['loop_share']:.2f} | "
          f"{fmt(row['shrink_gain'])} | {fmt(hf_assisted)} | {fmt(row['spec_vs_hf_assisted'])} |", flush=True)
  if args.stream > 0:
    stream_table(args, drafter, verifier, hf_v, rows)
  print("\nper-call costs in a compiled loop (ms): "
        + "; ".join(f"batch {r['batch']}: t_d(1) {r['t_d1'] * 1e3:.2f}, verifier-alone step "
                    f"{r['t_v_step'] * 1e3:.2f} (t_v(1) in a call loop {r['t_v1'] * 1e3:.2f}; "
                    f"bounds with it {r['bounds_call_loop'][0]:.2f} / "
                    f"{r['bounds_call_loop'][1]:.2f}), t_v({gamma + 1}) {r['t_vk'] * 1e3:.2f}, one "
                    f"block's calls alternating {r['t_block'] * 1e3:.2f} (its drafter calls "
                    f"alone {r['t_drafts'] * 1e3:.2f}), encoders E_v {r['enc_v'] * 1e3:.2f} / "
                    f"E_d {r['enc_d'] * 1e3:.2f}" for r in rows))
  print("block / (γ·t_d(1) + t_v(γ+1)) = drafter pattern × alternation: "
        + "; ".join(f"batch {r['batch']}: {r['t_block'] / (gamma * r['t_d1'] + r['t_vk']):.2f} = "
                    f"{r['t_drafts'] / (gamma * r['t_d1']):.2f} × "
                    f"{r['t_block'] / (r['t_drafts'] + r['t_vk']):.2f}" for r in rows))
  print("all outputs identical to transformers' greedy generate, token for token.")
  return rows


if __name__ == "__main__":
  main()
