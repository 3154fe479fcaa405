"""Our engine vs Hugging Face transformers on a decoder-only (Llama-style) pair, greedy.

    python bench/decoder_only_speed.py [--batches 1,8] [--gammas 3,5] [--max_new_tokens 64]
                                       [--prompt_len 64] [--prompts 4] [--trials 5]
                                       [--noise 0.1] [--size real|mini] [--device cpu|cuda]
    python bench/decoder_only_speed.py --smoke     # tiny sizes, one round: checks it runs

Issue 21's speed target, side by side in one process on the same weights:

* the pair: a Llama-style drafter (d256, 2 layers, 4 query / 2 key-value heads, SwiGLU
  768, ≈ 5.8M params) embedded exactly into a verifier (d512, 6 layers, 8 / 4 heads, SwiGLU
  1536, ≈ 27M), vocab 8192: zero-padded widths, the drafter's heads as the verifier's first
  heads, identity extra layers (`embed_decoder_drafter`), plus `--noise` × a fresh random
  init, so the two agree on most greedy tokens without being the same function. Both
  models' EOS logit column is zero, so EOS never wins greedy decoding on random weights and
  every row runs `--max_new_tokens` (both sides still stop at the config's EOS id alike);
* both are written with `hf_decoder.export_hf_decoder`, loaded by transformers
  (`AutoModelForCausalLM`, which builds a `LlamaForCausalLM`) and read back with
  `hf_decoder.load_hf_decoder`: our engine runs on the round-tripped weights
  (`hf_peer.hf_models`);
* (a) our `generate(method='verifier')` vs HF `generate()`; (b) our greedy
  `generate(method='spec_decode', num_draft_tokens=γ)` for each γ in `--gammas` vs HF
  `generate(assistant_model=drafter)` with its draft length fixed to γ (constant schedule, no
  confidence early stop). HF's assisted generation is batch 1 only, so at batch > 1 our
  SpecDecode is timed against HF greedy;
* batch 1 decodes `--prompts` prompts one call each (no padding on either side); a batch B > 1
  is one call of B prompts of different lengths, right-padded for us, left-padded with an
  attention mask for HF (each real token at the same position and context either way);
* every output is compared token for token with HF greedy (up to and including EOS); any
  difference exits non-zero.

Timings are medians of `--trials` interleaved rounds (every runner once per round, so load on a
shared machine hits all alike) after one warm-up call each (compilation and HF's first-call
overheads excluded). tokens/s counts generated tokens (prompts excluded). Read the ratios, not
the absolute numbers, unless the machine was idle.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import flax
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# hf_peer adds the repo root to the path and sets OMP_WAIT_POLICY=PASSIVE before torch loads
# (spin-waiting torch threads starve XLA's on a small CPU).
import hf_peer  # pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=g-import-not-at-top
from spec_cascade import costs
from spec_cascade.decoding import PAD_ID, Bundle, generate
from spec_cascade.models import DecoderConfig, DecoderOnlyModel
# pylint: enable=g-import-not-at-top

Params = dict
BOS_ID, EOS = 1, 2  # Llama 2's ids; prompts start with BOS, ids ≥ 3 follow

# (drafter, verifier) shapes. The verifier keeps the drafter's head_dim (RoPE's frequencies
# depend on it) and its query heads per key-value head (GQA's grouping), so the drafter's heads
# can be its first heads.
SIZES = {
    "real": (DecoderConfig(vocab_size=8192, emb_dim=256, num_heads=4, num_kv_heads=2,
                           head_dim=64, mlp_dim=768, num_layers=2, eos_id=EOS),
             dict(emb_dim=512, num_heads=8, num_kv_heads=4, mlp_dim=1536, num_layers=6)),
    # The T5 comparison's scale (hf_peer.synthetic_pair: d128 → d256, vocab 4224), where a
    # step's weights are a few MB and per-call overhead, not memory bandwidth, sets the pace.
    "mini": (DecoderConfig(vocab_size=4224, emb_dim=128, num_heads=4, num_kv_heads=2,
                           head_dim=32, mlp_dim=384, num_layers=2, eos_id=EOS),
             dict(emb_dim=256, num_heads=8, num_kv_heads=4, mlp_dim=768, num_layers=4)),
    "smoke": (DecoderConfig(vocab_size=512, emb_dim=32, num_heads=2, num_kv_heads=1,
                            head_dim=16, mlp_dim=64, num_layers=1, eos_id=EOS),
              dict(emb_dim=64, num_heads=4, num_kv_heads=2, mlp_dim=128, num_layers=2)),
}


# ----------------------------------------------------------------------------------------------
# The synthetic pair (pure helpers)

def embed_decoder_drafter(d_params: Params, d_cfg: DecoderConfig,
                          v_cfg: DecoderConfig) -> Params:
  """Verifier params [v_cfg] computing exactly the drafter's function [d_cfg] (Llama-style).

  Every matrix is the drafter's in its leading corner and zero elsewhere: model and MLP
  widths are zero-padded, the drafter's heads are the verifier's first heads (same head_dim
  and grouping, so the first query heads read the first key-value heads), extra heads and
  extra layers write nothing to the residual stream. RMSNorm scales get sqrt(d_drafter /
  d_verifier): the padded stream has the same sum of squares over more dimensions.
  """
  hf_peer.check_embeddable(
      "embed_decoder_drafter", d_cfg, v_cfg,
      equal=("vocab_size", "head_dim", "mlp_activation", "rope_base", "rope_scaling",
             "tie_embeddings", "qkv_bias", "eos_id"),
      at_least=("emb_dim", "num_heads", "num_kv_heads", "mlp_dim", "num_layers"))
  for cfg in (d_cfg, v_cfg):
    # Gemma's sqrt(d) embedding scale and 1 + w norms would not survive zero-padding as is.
    if cfg.family != "llama":
      raise ValueError(f"embed_decoder_drafter handles Llama-style configs, got {cfg}.")
  if d_cfg.num_heads // d_cfg.num_kv_heads != v_cfg.num_heads // v_cfg.num_kv_heads:
    raise ValueError("embed_decoder_drafter needs equal query heads per key-value head.")
  norm = float(np.sqrt(d_cfg.emb_dim / v_cfg.emb_dim))
  d_flat = flax.traverse_util.flatten_dict(d_params, sep="/")
  abstract = flax.traverse_util.flatten_dict(DecoderOnlyModel(v_cfg).abstract_params(), sep="/")
  v_flat = {}
  for path, shape in abstract.items():
    is_norm = path.endswith("/scale")
    out = np.full(shape.shape, norm if is_norm else 0.0, np.float32)
    if path in d_flat:
      src = np.asarray(d_flat[path]) * (norm if is_norm else 1.0)
      out[tuple(slice(0, n) for n in src.shape)] = src
    v_flat[path] = out
  return flax.traverse_util.unflatten_dict(v_flat, sep="/")


def _silence_eos(params: Params, eos: int) -> Params:
  """A copy with the output column of `eos` zero: a logit of exactly 0 never wins greedy
  decoding against thousands of random logits, so rows run their full length."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  kernel = np.array(flat["decoder/logits_dense/kernel"])
  kernel[:, eos] = 0.0
  flat["decoder/logits_dense/kernel"] = kernel
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def synthetic_decoder_pair(size: str = "real", noise: float = 0.1, seed: int = 0):
  """(drafter, verifier) Bundles of DecoderOnlyModels shaped by SIZES[size]."""
  d_cfg, grow = SIZES[size]
  v_cfg = d_cfg.replace(**grow)
  d_model, v_model = DecoderOnlyModel(d_cfg), DecoderOnlyModel(v_cfg)
  d_params = jax.tree_util.tree_map(np.array, d_model.init_params(jax.random.key(seed)))
  v_params = hf_peer.perturb(embed_decoder_drafter(d_params, d_cfg, v_cfg), v_model, noise,
                             seed + 1)
  # On the device once, as load_bundle places them: numpy parameters would be copied to the
  # device by every generate call (≈ 14 ms for the 27M verifier). profile_decode.py decodes
  # with these; main() times the weights re-imported by hf_peer.hf_models (placed on load).
  return (Bundle(d_model, jax.device_put(_silence_eos(d_params, d_cfg.eos_id))),
          Bundle(v_model, jax.device_put(_silence_eos(v_params, v_cfg.eos_id))))


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
  """int32 [batch, length] right-padded prompts: BOS, then ids ≥ 3, 0 after a random length
  in [length / 2, length]."""
  rng = np.random.default_rng(seed)
  x = rng.integers(EOS + 1, vocab, (batch, length)).astype(np.int32)
  x[:, 0] = BOS_ID
  for r in range(batch):
    x[r, rng.integers(length // 2, length + 1):] = PAD_ID
  return x


# ----------------------------------------------------------------------------------------------
# The two sides

def check_same(what: str, ours: list, theirs: list, eos: int) -> None:
  """Raises SystemExit naming the rows where our GenerateOutputs differ from HF's tokens."""
  bad = [f"call {i} {m}" for i, (o, h) in enumerate(zip(ours, theirs))
         for m in hf_peer.mismatches(o.tokens, o.lengths, h, eos)]
  if bad:
    raise SystemExit(f"FAIL ({what}): our greedy output differs from transformers' in "
                     f"{len(bad)} row(s):\n  " + "\n  ".join(bad[:5]))


def runners(drafter: Bundle, verifier: Bundle, hf_d, hf_v, calls: list, steps: int,
            gammas: list[int], assisted: bool) -> dict:
  """{name: a function decoding every batch in `calls` and returning its outputs (a list)}:
  'hf' and 'ours_v' (verifier alone), and per γ 'ours_s{γ}' and, when `assisted`, 'hf_a{γ}'."""
  eos = verifier.model.config.eos_id
  kw = dict(temperature=0.0, max_decode_length=steps)
  fns = {"hf": lambda: [hf_peer.hf_generate(hf_v, x, steps, eos=eos) for x in calls],
         "ours_v": lambda: [generate(None, verifier, x, method="verifier", **kw) for x in calls]}
  for g in gammas:
    fns[f"ours_s{g}"] = lambda g=g: [generate(drafter, verifier, x, method="spec_decode",
                                              num_draft_tokens=g, **kw) for x in calls]
    if assisted:
      fns[f"hf_a{g}"] = lambda g=g: [hf_peer.hf_generate(hf_v, x, steps, hf_d, g, eos)
                                     for x in calls]
  return fns


@dataclasses.dataclass
class Row:
  """One line of the table: ours and HF on the same calls, `tokens` new tokens in all.
  hf_what names the HF run held against ours (HF greedy, or assisted at batch 1)."""
  batch: int
  method: str
  tokens: int
  ours_s: float
  hf_s: float
  hf_what: str
  accept: float | None = None
  tok_per_block: float | None = None

  def cells(self, verifier_s: float, hf_greedy_s: float) -> list[str]:
    """The table's cells; verifier_s / hf_greedy_s: the batch's verifier-alone times."""
    opt = lambda v: "–" if v is None else f"{v:.2f}"
    return [str(self.batch), self.method, str(self.tokens), f"{self.tokens / self.ours_s:.0f}",
            f"{self.tokens / self.hf_s:.0f}", self.hf_what, f"{self.hf_s / self.ours_s:.2f}×",
            f"{verifier_s / self.ours_s:.2f}×", f"{hf_greedy_s / self.hf_s:.2f}×",
            opt(self.accept), opt(self.tok_per_block)]


HEADER = ["batch", "method", "tokens", "ours tok/s", "HF tok/s", "HF side", "ours / HF",
          "ours vs ours verifier", "HF vs HF greedy", "accept a", "tok/block"]


def measure(drafter: Bundle, verifier: Bundle, hf_d, hf_v, batch: int, args) -> list[Row]:
  """Times and checks one batch size; returns its table rows."""
  vocab, eos = verifier.model.config.vocab_size, verifier.model.config.eos_id
  gammas = [int(g) for g in args.gammas.split(",")]
  if batch == 1:
    calls = [random_prompts(1, args.prompt_len, vocab, args.seed + 100 + i)
             for i in range(args.prompts)]
  else:
    calls = [random_prompts(batch, args.prompt_len, vocab, args.seed + batch)]
  fns = runners(drafter, verifier, hf_d, hf_v, calls, args.max_new_tokens, gammas,
                assisted=batch == 1)
  out, t = costs.interleaved(fns, args.trials)
  check_same(f"verifier alone, batch {batch}", out["ours_v"], out["hf"], eos)
  tokens = int(sum(o.lengths.sum() for o in out["ours_v"]))
  rows = [Row(batch, "verifier alone", tokens, t["ours_v"], t["hf"], "generate()")]
  for g in gammas:
    spec = out[f"ours_s{g}"]
    check_same(f"SpecDecode γ={g}, batch {batch}", spec, out["hf"], eos)
    hf_s, hf_what = t["hf"], "generate()"
    if batch == 1:
      # Ours against HF greedy above; HF assisted against HF greedy here, so all three agree.
      check_same(f"HF assisted γ={g} (vs ours)", spec, out[f"hf_a{g}"], eos)
      hf_s, hf_what = t[f"hf_a{g}"], f"assisted γ={g}"
    c = {k: np.concatenate([o.counters[k] for o in spec]) for k in spec[0].counters}
    rows.append(Row(batch, f"SpecDecode γ={g}", tokens, t[f"ours_s{g}"], hf_s, hf_what,
                    accept=hf_peer.acceptance_rate(c),
                    tok_per_block=float(c["output_tokens"].sum() / c["blocks"].sum())))
  return rows


def print_table(rows: list[Row], times: dict) -> None:
  """times: {batch: (our verifier-alone s, HF greedy s)}."""
  print("| " + " | ".join(HEADER) + " |")
  print("|" + "---|" * len(HEADER))
  for r in rows:
    print("| " + " | ".join(r.cells(*times[r.batch])) + " |", flush=True)


def main(argv=None) -> list[Row]:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--gammas", default="3,5")
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--prompt_len", type=int, default=64,
                      help="longest prompt (each is BOS + ids, at least half this long)")
  parser.add_argument("--prompts", type=int, default=4,
                      help="batch 1: prompts per timed round, one generate call each")
  parser.add_argument("--trials", type=int, default=5, help="interleaved timed rounds")
  parser.add_argument("--noise", type=float, default=0.1,
                      help="verifier = the embedded drafter + noise × a random init (0.1: "
                      "greedy acceptance ≈ 0.75)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--size", default="real", choices=("real", "mini"),
                      help="real: the 27M verifier (weight-bandwidth-bound at batch 1 on a "
                      "small CPU); mini: the T5 comparison's d128 → d256 scale")
  hf_peer.add_torch_flags(parser)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny models, batches 1 and 2, γ=2, 8 new tokens, 1 round")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batches, args.gammas, args.max_new_tokens = "1,2", "2", 8
    args.prompt_len, args.prompts, args.trials = 8, 1, 1

  hf_peer.start_torch(args, "bench/decoder_only_speed.py", argv)
  drafter, verifier = synthetic_decoder_pair("smoke" if args.smoke else args.size, args.noise,
                                             args.seed)
  with tempfile.TemporaryDirectory() as tmp:
    models = hf_peer.hf_models(drafter, verifier, tmp, args.device)
  hf_d, drafter = models["drafter"]
  hf_v, verifier = models["verifier"]
  shape = lambda b: (f"{b.model.num_params() / 1e6:.2f}M params (d{b.model.config.emb_dim}, "
                     f"{b.model.config.num_layers} layers, {b.model.config.num_heads}/"
                     f"{b.model.config.num_kv_heads} heads, MLP {b.model.config.mlp_dim})")
  print(f"# drafter {shape(drafter)}, verifier {shape(verifier)}, vocab "
        f"{verifier.model.config.vocab_size}, HF {type(hf_v).__name__} "
        f"({getattr(hf_v.config, '_attn_implementation', '?')} attention); greedy; "
        f"{args.max_new_tokens} new tokens; prompts ≤{args.prompt_len} tokens; batch 1: "
        f"{args.prompts} prompts, one call each; noise={args.noise}; median of {args.trials} "
        "interleaved rounds after a warm-up\n")
  rows, times = [], {}
  for batch in (int(b) for b in args.batches.split(",")):
    batch_rows = measure(drafter, verifier, hf_d, hf_v, batch, args)
    times[batch] = (batch_rows[0].ours_s, batch_rows[0].hf_s)
    rows += batch_rows
  print_table(rows, times)
  print("\nours / HF: HF time / our time on the same calls (HF side: the HF run it is held "
        "against). all outputs identical to transformers' greedy generate, token for token.")
  return rows


if __name__ == "__main__":
  main()
