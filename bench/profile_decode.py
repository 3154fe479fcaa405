"""Where a compiled decode loop spends its time: a jax.profiler trace, aggregated per op.

    python bench/profile_decode.py [--method spec_decode] [--batch 32] [--gamma 5] [--top 25]
        [--offline [--grow_verifier 16x2560x8+24] [--matmul_dtype bfloat16]]

Runs decoding (greedy unless --temperature > 0) of the synthetic pair (bench/hf_peer.py
`synthetic_pair`, real `tiny`/`mini` sizes; with --offline the committed pair on debian_ende
validation inputs, and with --grow_verifier its verifier grown as in bench/verifier_scale.py)
once to compile, then once under
`jax.profiler.trace` with a perfetto trace. Each traced op (XLA thunk / fusion) is matched to
its instruction in the program's optimized HLO, whose metadata names the source op and the
`jax.named_scope`s of spec_cascade/decoding/ it ran under (encode_drafter, encode_verifier,
drafter, verifier, sample, verify, commit). Prints the time per scope (and per loop step) and
the source ops that took the most time. The raw trace stays in --trace_dir for
ui.perfetto.dev (open the *.trace.json.gz file).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_peer  # pylint: disable=g-import-not-at-top,wrong-import-position  (adds the repo root)

from spec_cascade import decoding  # pylint: disable=g-import-not-at-top
from spec_cascade import methods  # pylint: disable=g-import-not-at-top
from spec_cascade.decoding import generate  # pylint: disable=g-import-not-at-top


SCOPES = ("encode_drafter", "encode_verifier", "drafter", "verifier", "sample", "verify",
          "commit")  # jax.named_scope labels in spec_cascade/decoding/


def op_totals(trace_file: str) -> tuple[collections.Counter, collections.Counter]:
  """Total duration (µs) and count per event name, over complete ('X') events."""
  with gzip.open(trace_file, "rt") as f:
    events = json.load(f)["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      total[e["name"]] += float(e["dur"])
      count[e["name"]] += 1
  return total, count


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name → (opcode, op_name metadata) of an optimized HLO module's text.

  Instructions XLA created without metadata (e.g. a dot split out of a fusion by layout
  assignment) inherit the op_name of their first user that has one, so their time is
  attributed to the model call they belong to instead of "other".
  """
  ops, users = {}, collections.defaultdict(list)
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%(\S+) = (?:\S+|\(.*?\)) ([\w-]+)\((.*)", line)
    if m:
      meta = re.search(r'op_name="([^"]*)"', line)
      ops[m.group(1)] = (m.group(2), meta.group(1) if meta else "")
      for operand in re.findall(r"%([\w.-]+)", m.group(3).split("metadata=")[0]):
        users[operand].append(m.group(1))

  def inherited(name: str, depth: int = 0) -> str:
    if ops[name][1] or depth > 8:
      return ops[name][1]
    for user in users.get(name, ()):
      if user in ops and (found := inherited(user, depth + 1)):
        return found
    return ""

  return {n: (op, meta or inherited(n)) for n, (op, meta) in ops.items()}


def scope_of(op_name: str) -> str:
  """The innermost decoding scope an op ran under ('other' if none)."""
  parts = op_name.split("/")
  for part in reversed(parts):
    if part in SCOPES:
      return part
  return "other"


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--method", default="spec_decode")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--gamma", type=int, default=5)
  parser.add_argument("--max_decode_length", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=0.0)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--trace_dir", default=None)
  parser.add_argument("--pair", default="t5", choices=("t5", "decoder"),
                      help="t5: hf_peer.synthetic_pair; decoder: decoder_only_speed's Llama pair")
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--drafter", default=None, help="checkpoint folder (with --verifier): "
                      "profile this T5 pair instead of a synthetic one")
  parser.add_argument("--verifier", default=None)
  parser.add_argument("--offline", action="store_true",
                      help="profile the committed offline pair on debian_ende validation inputs")
  parser.add_argument("--grow_verifier", default=None, metavar="HEADSxMLPxENC+DEC",
                      help="with --offline: the verifier grown function-preservingly to this "
                           "size (bench/verifier_scale.py)")
  parser.add_argument("--matmul_dtype", default=None, help="with --offline: 'bfloat16' inputs")
  parser.add_argument("--scope", default=None, help="list only the ops of this scope "
                      f"({', '.join(SCOPES)}, other)")
  args = parser.parse_args()

  if args.offline or args.grow_verifier:
    from spec_cascade import pretrained  # pylint: disable=g-import-not-at-top
    import verifier_scale  # pylint: disable=g-import-not-at-top
    drafter, verifier, _ = pretrained.load_offline_pair(matmul_dtype=args.matmul_dtype)
    if args.grow_verifier:
      verifier = verifier_scale.grown_offline_verifier(args.grow_verifier,
                                                       matmul_dtype=args.matmul_dtype)
    _, _, make_inputs = pretrained.offline_pair_for_bench()
    inputs = make_inputs(args.batch, args.prompt_len)
  elif args.drafter or args.verifier:
    if not (args.drafter and args.verifier):
      sys.exit("--drafter and --verifier go together.")
    from spec_cascade import infer  # pylint: disable=g-import-not-at-top
    drafter = decoding.Bundle(*infer.load_bundle(args.drafter))
    verifier = decoding.Bundle(*infer.load_bundle(args.verifier))
    inputs = hf_peer.random_inputs(args.batch, args.prompt_len,
                                   drafter.model.config.vocab_size, seed=1)
  elif args.pair == "decoder":
    import decoder_only_speed  # pylint: disable=g-import-not-at-top
    drafter, verifier = decoder_only_speed.synthetic_decoder_pair()
    inputs = decoder_only_speed.random_prompts(args.batch, args.prompt_len,
                                               drafter.model.config.vocab_size, seed=1)
  else:
    drafter, verifier = hf_peer.synthetic_pair()
    inputs = hf_peer.random_inputs(args.batch, args.prompt_len,
                                   drafter.model.config.vocab_size, seed=1)
  kw = dict(method=args.method, num_draft_tokens=args.gamma,
            max_decode_length=args.max_decode_length, temperature=args.temperature)
  run = lambda: generate(drafter, verifier, inputs, **kw)

  def compiled_text() -> str:
    """The optimized HLO of the program `run` executes (same instruction names as the trace)."""
    spec = decoding.make_spec(args.method, None, num_draft_tokens=args.gamma,
                              max_decode_length=args.max_decode_length)
    knobs = decoding.make_knobs(spec, temperature=args.temperature)
    use_d = methods.get(args.method).uses_drafter
    use_v = methods.get(args.method).uses_verifier
    fn = decoding.compiled_decode(drafter.model.config if use_d else None,
                                  verifier.model.config if use_v else None, spec)
    ids = jnp.arange(args.batch, dtype=jnp.int32)
    return fn.lower(drafter.params if use_d else None, verifier.params if use_v else None,
                    jnp.asarray(inputs), ids, jnp.int32(0), knobs).compile().as_text()
  run()
  start = time.perf_counter()
  res = run()
  wall = time.perf_counter() - start
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="spec_cascade_profile_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    run()
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    sys.exit(f"no perfetto trace written under {trace_dir}")
  total, count = op_totals(max(files, key=os.path.getmtime))
  ops = hlo_ops(compiled_text())
  # Leaf ops only: control flow (while/conditional/call) contains the ops it runs.
  leaf = {n: t for n, t in total.items()
          if n in ops and ops[n][0] not in ("while", "conditional", "call")}
  op_sum = sum(leaf.values())
  blocks = int(res.counters["blocks"].max())
  print(f"{args.method} batch {args.batch} γ {args.gamma} T {args.temperature}: untraced decode "
        f"{wall * 1e3:.1f} ms, {blocks} loop steps; traced ops {op_sum / 1e3:.1f} ms; "
        f"trace: {trace_dir}")
  by_scope = collections.Counter()
  for n, t in leaf.items():
    by_scope[scope_of(ops[n][1])] += t
  print(f"\n{'scope':18s} {'ms':>9s} {'ms/step':>8s} {'share':>6s}")
  for scope, t in by_scope.most_common():
    print(f"{scope:18s} {t / 1e3:9.2f} {t / 1e3 / max(blocks, 1):8.2f} {t / op_sum:6.1%}")
  by_op = collections.Counter()
  calls = collections.Counter()
  for n, t in leaf.items():
    if args.scope and scope_of(ops[n][1]) != args.scope:
      continue
    name = ops[n][1]
    for noise in ("jit(decode)/", "while/body/", "closed_call/", "Transformer.decode_block/",
                  "decoder.decode_block/", "decoder._stack/", "Transformer.encode/"):
      name = name.replace(noise, "")
    key = re.sub(r"\d+", "#", name)[:90] or f"{n} (no metadata)"
    by_op[key] += t
    calls[key] += count[n]
  print(f"\n{'op (source op_name, digits as #)':90s} {'ms':>8s} {'calls':>6s} {'share':>6s}")
  for key, t in by_op.most_common(args.top):
    print(f"{key:90s} {t / 1e3:8.2f} {calls[key]:6d} {t / op_sum:6.1%}")


if __name__ == "__main__":
  main()
