"""The benchmark scripts' pure helpers (bench/hf_peer.py, bench/compile_time.py,
bench/decoder_only_speed.py): fast checks; bench/stream_speedup.py and
bench/decoder_only_speed.py end to end on a few examples (slow)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import compile_time  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import decoder_only_speed  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import hf_peer  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from spec_cascade import decoding  # noqa: E402  pylint: disable=g-import-not-at-top
from spec_cascade.models import DecoderOnlyModel, T5Model, get_config  # noqa: E402  pylint: disable=g-import-not-at-top

# Small shapes with everything the embedding must handle: wider model, heads and MLP,
# more encoder and decoder layers.
D_CFG = get_config("tiny").replace(vocab_size=61, emb_dim=16, num_heads=2, head_dim=4,
                                   mlp_dim=24, num_encoder_layers=1, num_decoder_layers=1)
V_CFG = D_CFG.replace(emb_dim=32, head_dim=8, mlp_dim=40, num_encoder_layers=2,
                      num_decoder_layers=3)


def _logits(cfg, params, x, dec):
  return np.asarray(T5Model(cfg).forward(params, jnp.asarray(x), jnp.asarray(dec)))


def test_embedded_drafter_computes_the_drafters_function():
  d_params = T5Model(D_CFG).init_params(jax.random.key(0))
  v_params = hf_peer.embed_drafter(d_params, D_CFG, V_CFG)
  T5Model(V_CFG).check_params(v_params)
  x = hf_peer.random_inputs(3, 9, D_CFG.vocab_size)
  dec = np.random.default_rng(1).integers(2, D_CFG.vocab_size, (3, 6)).astype(np.int32)
  dec[:, 0] = 0
  ref = _logits(D_CFG, d_params, x, dec)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(_logits(V_CFG, v_params, x, dec), ref, atol=1e-4, rtol=0)
  # Noise makes it a different model (so speculative blocks get rejections).
  noisy = hf_peer.perturb(v_params, T5Model(V_CFG), 0.5, seed=3)
  assert np.abs(_logits(V_CFG, noisy, x, dec) - ref).max() > 1e-2


def test_embed_drafter_rejects_incompatible_shapes():
  with pytest.raises(ValueError, match="num_heads"):
    hf_peer.embed_drafter({}, D_CFG, V_CFG.replace(num_heads=3))
  with pytest.raises(ValueError, match="emb_dim"):
    hf_peer.embed_drafter({}, V_CFG, D_CFG)


def test_embedded_decoder_drafter_computes_the_drafters_function():
  """Wider model, MLP, more query and key-value heads (same grouping), more layers."""
  d_cfg, grow = decoder_only_speed.SIZES["smoke"]
  v_cfg = d_cfg.replace(**grow)
  d_params = DecoderOnlyModel(d_cfg).init_params(jax.random.key(0))
  v_params = decoder_only_speed.embed_decoder_drafter(d_params, d_cfg, v_cfg)
  DecoderOnlyModel(v_cfg).check_params(v_params)
  x = jnp.asarray(decoder_only_speed.random_prompts(3, 9, d_cfg.vocab_size))
  ref = np.asarray(DecoderOnlyModel(d_cfg).forward(d_params, x))
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(np.asarray(DecoderOnlyModel(v_cfg).forward(v_params, x)), ref,
                             atol=1e-4, rtol=0)
  with pytest.raises(ValueError, match="head_dim"):
    decoder_only_speed.embed_decoder_drafter({}, d_cfg, v_cfg.replace(head_dim=32))
  with pytest.raises(ValueError, match="key-value head"):
    decoder_only_speed.embed_decoder_drafter({}, d_cfg, v_cfg.replace(num_kv_heads=4))
  with pytest.raises(ValueError, match="emb_dim"):
    decoder_only_speed.embed_decoder_drafter({}, v_cfg, d_cfg)


def test_decoder_prompts_and_their_left_padding():
  x = decoder_only_speed.random_prompts(4, 10, 50, seed=1)
  assert x.dtype == np.int32 and (x[:, 0] == decoder_only_speed.BOS_ID).all()
  assert (x[:, 1:5] > decoder_only_speed.EOS).all()
  ids, mask = hf_peer.left_padded(x)
  lengths = (x != 0).sum(1)
  assert ids.shape[1] == lengths.max()
  for row, left, m, n in zip(x, ids, mask, lengths):
    assert (row[n:] == 0).all() and left[-n:].tolist() == row[:n].tolist()
    assert m.tolist() == [0] * (len(m) - n) + [1] * n


def test_mismatches_compares_up_to_and_including_eos():
  ours = np.array([[5, 6, 1, 0], [7, 8, 9, 4]])
  lengths = np.array([3, 4])
  same = np.array([[5, 6, 1, 0, 0], [7, 8, 9, 4, 0]])[:, :4]
  assert hf_peer.mismatches(ours, lengths, same) == []
  # HF generates past our EOS (a different EOS position) / a different token.
  late_eos = np.array([[5, 6, 3, 1], [7, 8, 9, 4]])
  bad = hf_peer.mismatches(ours, lengths, late_eos)
  assert len(bad) == 1 and bad[0].startswith("row 0") and "at 2" in bad[0]
  other = np.array([[5, 6, 1, 0], [7, 2, 9, 4]])
  assert hf_peer.mismatches(ours, lengths, other)[0].startswith("row 1")
  np.testing.assert_array_equal(hf_peer.until_eos(np.array([3, 1, 0, 1])), [3, 1])
  np.testing.assert_array_equal(hf_peer.until_eos(np.array([3, 1, 2, 1]), eos=2), [3, 1, 2])


def test_analytic_bound():
  assert hf_peer.expected_tokens(0.0, 5) == 1.0
  assert hf_peer.expected_tokens(1.0, 5) == 6.0
  assert hf_peer.expected_tokens(0.5, 2) == pytest.approx(1.75)
  # Free drafter and a block verify as cheap as one step: the bound is E[tokens].
  assert hf_peer.analytic_bound(0.5, 2, 0.0, 1.0, 1.0) == pytest.approx(1.75)
  # γ = 3 drafter steps at 0.25 plus one verify: the cost of 1.75 steps buys 4 tokens.
  assert hf_peer.analytic_bound(1.0, 3, 0.25, 1.0, 1.0) == pytest.approx(4 / 1.75)


def test_random_inputs_are_padded_token_ids():
  x = hf_peer.random_inputs(5, 12, 50, seed=2)
  assert x.shape == (5, 12) and x.dtype == np.int32
  assert (x[:, :6] >= 2).all() and (x < 50).all()
  for row in x:  # padding only at the end
    nz = np.flatnonzero(row == 0)
    assert nz.size == 0 or (row[nz[0]:] == 0).all()


def test_compile_time_covers_every_method():
  # Cases named after a method time it; the others (the sweep's shared rule program) name
  # theirs.
  assert set(decoding.METHODS) <= set(compile_time.CASES)
  for name, (_, extra) in compile_time.CASES.items():
    assert name in decoding.METHODS or extra["method"] in decoding.METHODS


def test_acceptance_rate_counts_tests_not_drafts():
  # Row 0: 3 accepted then a rejection (drafts after it untested); row 1: 5 of 5 accepted.
  counters = {"accepted": np.array([3, 5]), "rejected": np.array([1, 0]),
              "drafted": np.array([5, 5])}
  assert hf_peer.acceptance_rate(counters) == 8 / 9
  assert hf_peer.acceptance_rate({"accepted": np.zeros(2), "rejected": np.zeros(2)}) == 0.0


def test_expected_max_blocks_matches_simulation():
  # Edge cases are exact: a = 1 → blocks of γ + 1; a = 0 → one token per block.
  assert hf_peer.expected_max_blocks(1.0, 5, [64]) == pytest.approx(11)   # ceil(64 / 6)
  assert hf_peer.expected_max_blocks(0.0, 5, [64, 10]) == pytest.approx(64)
  assert hf_peer.blocks_cdf(0.5, 3, 0)[0] == 1.0
  # Mid a: Monte Carlo of the i.i.d. block model, rows of different lengths.
  rng = np.random.default_rng(0)
  a, gamma, lengths = 0.8, 4, [20, 30, 30, 7]
  sims = []
  for _ in range(20000):
    worst = 0
    for n in lengths:
      done, blocks = 0, 0
      while done < n:
        accepted = 0
        while accepted < gamma and rng.random() < a:
          accepted += 1
        done += accepted + 1
        blocks += 1
      worst = max(worst, blocks)
    sims.append(worst)
  assert hf_peer.expected_max_blocks(a, gamma, lengths) == pytest.approx(np.mean(sims), abs=0.03)
  # More rows → more blocks (the slowest row sets the pace), and the batch bound drops.
  one = hf_peer.batch_bound(a, gamma, [30], 0.1, 1.0, 1.5)
  many = hf_peer.batch_bound(a, gamma, [30] * 16, 0.1, 1.0, 1.5)
  assert many < one < hf_peer.analytic_bound(a, gamma, 0.1, 1.0, 1.5) * 1.1


def test_micro_ops_forms_agree_and_run(capsys):
  import micro_ops  # pylint: disable=g-import-not-at-top
  micro_ops.main(["--iters", "2", "--reps", "1"])  # asserts each form against the reference
  out = capsys.readouterr().out
  assert "| 32 | 6 |" in out and "| 48 |" in out and "| 192 |" in out


@pytest.mark.slow
def test_stream_speedup_runs_and_checks_outputs(capsys):
  import stream_speedup  # pylint: disable=g-import-not-at-top
  stream_speedup.main(["--examples", "6", "--rows", "2", "--trials", "1",
                       "--max_decode_length", "6", "--gamma", "2", "--seq_alpha", "0.5"])
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| 2 |")]
  assert len(rows) == 2 and rows[0].count("×") == 2 and "%" in rows[1], rows


@pytest.mark.slow
def test_decoder_only_speed_smoke_runs_and_checks_outputs(capsys):
  """--smoke: tiny Llama pair exported to transformers, batches 1 and 2, one round; the
  script exits non-zero if any output differs from HF greedy."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  rows = decoder_only_speed.main(["--smoke"])
  out = capsys.readouterr().out
  assert "| 1 | SpecDecode γ=2 | 8 |" in out and "assisted γ=2" in out
  assert "| 2 | verifier alone | 16 |" in out and "identical" in out
  assert [(r.batch, r.method) for r in rows] == [
      (1, "verifier alone"), (1, "SpecDecode γ=2"), (2, "verifier alone"),
      (2, "SpecDecode γ=2")]
  assert all(r.ours_s > 0 and r.hf_s > 0 for r in rows)
  assert 0 < rows[1].accept < 1  # a real drafter: some drafts rejected


@pytest.mark.slow
def test_default_pair_speed_runs_and_checks_outputs(tmp_path_factory, monkeypatch, capsys):
  import default_pair_speed  # pylint: disable=g-import-not-at-top
  import sweep_helpers  # pylint: disable=g-import-not-at-top
  from spec_cascade import autogamma  # pylint: disable=g-import-not-at-top
  env = sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", True)
  sweep_helpers.use_env(monkeypatch, env)
  autogamma.clear_cache()
  summary = default_pair_speed.main(
      ["--tasks", "debian_ende", "--examples", "3", "--gammas", "1,2", "--alphas", "0.5",
       "--batches", "2", "--rounds", "1", "--max_decode_length", "6", "--input_length", "32",
       "--grow_verifier", "3x96x1+4"])
  out = capsys.readouterr().out
  assert "verifier grown to 3x96x1+4" in out
  assert "| SpecDecode γ=1 |" in out and "| SpecDecode γ=auto (chose" in out
  assert "| SpecDecode γ=2 θ=0.4 |" in out  # dynamic draft length, greedy = the verifier
  assert "| T = 1, batch 1 |" in out and "| SpecCascade [Token] α=0.5 |" in out
  assert any(what == "batch 2 SpecDecode auto" for _, what, _ in summary)
  assert all(value > 0 for _, _, value in summary)


@pytest.mark.slow
def test_verifier_scale_grows_the_verifier_and_keeps_its_tokens(tmp_path_factory, monkeypatch,
                                                                capsys):
  import sweep_helpers  # pylint: disable=g-import-not-at-top
  import verifier_scale  # pylint: disable=g-import-not-at-top
  env = sweep_helpers.offline_env(tmp_path_factory.getbasetemp() / "offline_env", True)
  sweep_helpers.use_env(monkeypatch, env)
  rows = verifier_scale.main(["--examples", "2", "--scales", "2x64x1+3,4x128x2+4",
                              "--gammas", "1,2", "--rounds", "1", "--max_decode_length", "5",
                              "--input_length", "32"])
  out = capsys.readouterr().out
  assert [scale for scale, _ in rows] == [(2, 64, 1, 3), (4, 128, 2, 4)]
  assert all(v > 0 for _, speed in rows for v in speed.values())
  lines = [line for line in out.splitlines() if line.startswith("| 4 × 128 × 2+4 |")]
  # The grown verifier computes the test verifier's function: its greedy tokens are the same.
  assert len(lines) == 1 and "| 1.000 |" in lines[0]
  assert "| bound, best γ: per row / with set-ups |" in out
  with pytest.raises(ValueError, match="HEADSxMLPxENC"):
    verifier_scale.parse_scale("16x2560x8")


def test_soak_counts_programs_per_method_and_reruns_slow_calls():
  import soak_generate  # pylint: disable=import-outside-toplevel
  from pairs import make_pair  # pylint: disable=import-outside-toplevel
  from spec_cascade import programs  # pylint: disable=import-outside-toplevel
  drafter, verifier = make_pair()
  programs.PROGRAMS.clear()
  lines = []
  res = soak_generate.soak(drafter, verifier, calls=10, max_len=70, max_batch=3,
                           methods=["verifier", "spec_decode"], max_decode_length=4,
                           report_every=5, log=lines.append)
  # Lengths 1–70 → 64 or 128, batch 1–3 → 1, 2 or 4: at most 6 shapes per method.
  assert sum(res["programs"].values()) == res["compiles"] == len(programs.PROGRAMS)
  assert all(1 <= v <= 6 for v in res["programs"].values())
  assert len(res["rss_mib"]) == 2 and sum("calls: RSS" in line for line in lines) == 2
  assert res["slow_calls"] == [] or all(r[0] > 3.0 for r in res["slow_calls"])


def test_block_cost_times_every_term(capsys):
  import block_cost  # pylint: disable=import-outside-toplevel
  from pairs import make_pair, random_inputs  # pylint: disable=import-outside-toplevel
  drafter, verifier = make_pair()
  block_cost.block_table(drafter, verifier, random_inputs(1), gamma=2, reps=1)
  block_cost.matmul_table(reps=1, pairs=2)
  out = capsys.readouterr().out
  assert "| the same calls alternating |" in out and "| alternation cost |" in out
  assert "| dependent MLP chain, 4 MB |" in out
  assert out.count("(1.00×)") >= 2  # each matmul table's reference cell


def test_few_rows_bench_chains_the_products_of_a_decoder_step():
  """bench/few_rows_kernel.py times the dense products one decoder step runs: every decoder
  kernel but the cross-attention keys and values (computed once per input), and the logits."""
  import few_rows_kernel  # pylint: disable=g-import-not-at-top
  params = T5Model(V_CFG).init_params(jax.random.key(0))

  def runs_each_step(path):
    names = [getattr(k, "key", "") for k in path]
    return names[-1] == "kernel" and not (
        "encoder_decoder_attention" in names and names[-2] in ("key", "value"))
  flat = jax.tree_util.tree_flatten_with_path(params["decoder"])[0]
  per_step = sorted(x.shape for path, x in flat if x.ndim == 2 and runs_each_step(path))
  assert sorted(few_rows_kernel.step_shapes(V_CFG)) == per_step
  assert len(per_step) == 9 * V_CFG.num_decoder_layers + 1


def test_cache_write_bench_compiles_each_mode_apart():
  """bench/cache_write.py: each write mode traces its own programs (a shared program cache
  would time one mode twice), and the flag is restored after each run."""
  import cache_write  # pylint: disable=import-outside-toplevel
  from pairs import make_pair, random_inputs  # pylint: disable=import-outside-toplevel
  from spec_cascade.models import layers  # pylint: disable=import-outside-toplevel
  drafter, verifier = make_pair()
  x = random_inputs(1)
  per_call = cache_write.call_costs(drafter, verifier, x, 12, iters=2, reps=1)
  assert set(per_call) == {(n, m) for n in ("drafter", "verifier") for m in cache_write.MODES}
  run = cache_write.run_in_mode(drafter, verifier)
  config = dict(method="verifier", temperature=0.0, max_decode_length=4)
  outs = {m: run(m, config, x, 0) for m in cache_write.MODES}
  np.testing.assert_array_equal(outs["select"].tokens, outs["update_slice"].tokens)
  assert all(len(c) == 1 for c in cache_write.Mode.caches.values())
  assert layers.MASKED_ONE_TOKEN_WRITE is True


def test_trim_padding_bench_compares_both_widths_on_the_same_tokens(capsys):
  import side_by_side  # pylint: disable=import-outside-toplevel
  import trim_padding  # pylint: disable=import-outside-toplevel
  from pairs import make_pair, random_inputs  # pylint: disable=import-outside-toplevel
  drafter, verifier = make_pair()
  xs = []
  for seed, length in ((0, 9), (1, 70)):  # two length buckets once trimmed: 64 and 128
    x = np.zeros((1, 200), np.int32)
    x[:, :length] = random_inputs(1, length=length, seed=seed)
    xs.append(x)
  configs = side_by_side.methods("2", 4, drafter=True)
  assert list(configs) == ["verifier alone", "drafter alone", "SpecDecode γ 2"]
  res = side_by_side.timed_runs(trim_padding.WIDTHS, configs, xs, 1,
                                trim_padding.run_at_width(drafter, verifier), warm_all=True)
  side_by_side.before_after(res, "as passed", "trimmed", configs, ("[1, 200]", "trimmed"))
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| ")]
  assert len(rows) == 1 + 3 and rows[-1].startswith("| SpecDecode γ 2 |")
  res[("trimmed", "SpecDecode γ 2")] = (res[("trimmed", "SpecDecode γ 2")][0] + 1, 1.0)
  with pytest.raises(SystemExit, match="SpecDecode γ 2 gives other tokens"):
    side_by_side.before_after(res, "as passed", "trimmed", configs, ("a", "b"))


@pytest.mark.skipif(not __import__("spec_cascade.models.cpu_kernels",
                                   fromlist=["available"]).available(),
                    reason="the few-row kernel cannot be built on this machine")
def test_step_variants_packs_and_traces_each_setting_apart(monkeypatch):
  """bench/step_variants.py: each setting streams its own twins (tiled or not) and traces its
  own programs; the step's twins are the products one decode step runs; the flag comes back."""
  import few_rows_kernel  # pylint: disable=import-outside-toplevel
  import step_variants  # pylint: disable=import-outside-toplevel
  from spec_cascade.models import cpu_kernels  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(cpu_kernels, "streaming_enabled", lambda: True)
  cfg = V_CFG.replace(emb_dim=64, head_dim=32, mlp_dim=128)  # full 64-column tiles
  exact = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32),
                                 T5Model(cfg).init_params(jax.random.key(0)))
  twins = {}
  for setting in step_variants.SETTINGS:
    with step_variants.Setting(setting):
      bundle = decoding.Bundle(T5Model(cfg), cpu_kernels.stream_params(exact))
      twins[setting] = step_variants.step_twins(bundle)
      run = step_variants.chain_loop(twins[setting], 3, iters=2)
      run()
  assert cpu_kernels.TILED_BF16 is True
  assert sorted(w.shape for w in twins["on"]) == sorted(few_rows_kernel.step_shapes(cfg))
  for off, on in zip(twins["off"], twins["on"]):
    np.testing.assert_array_equal(cpu_kernels.unpack_bf16(off, tiled=False),
                                  cpu_kernels.unpack_bf16(on, tiled=True))
  assert any(not np.array_equal(off, on) for off, on in zip(twins["off"], twins["on"]))


def test_step_variants_chain_runs_on_xla_dots_too():
  """bench/step_variants.py part 1b: the same chain over float32 weights with XLA's dot."""
  import step_variants  # pylint: disable=import-outside-toplevel
  ws = [jnp.ones((16, 24), jnp.float32), jnp.ones((24, 16), jnp.float32)]
  step_variants.chain_loop(ws, 3, iters=2, xla=True)()


def test_step_variants_few_tokens_switches_both_kernels(monkeypatch):
  """bench/step_variants.py --change few_tokens: 'off' traces XLA's attention and lookup, 'on'
  the kernels; both flags come back."""
  import step_variants  # pylint: disable=import-outside-toplevel
  from spec_cascade.models import cpu_kernels  # pylint: disable=import-outside-toplevel
  if not cpu_kernels.available():
    pytest.skip("the CPU kernels cannot be built on this machine")
  monkeypatch.setattr(step_variants.Setting, "change", "few_tokens")
  model = T5Model(V_CFG)
  params = model.init_params(jax.random.key(0))
  encoded, mask = model.encode(params, jnp.ones((1, 5), jnp.int32))
  cache = model.init_cache(params, encoded, mask, 8)
  tokens, offsets = jnp.ones((1, 2), jnp.int32), jnp.zeros((1,), jnp.int32)
  texts = {}
  for setting in step_variants.SETTINGS:
    with step_variants.Setting(setting):
      texts[setting] = jax.jit(model.decode_block).lower(params, cache, tokens,
                                                          offsets).as_text()
  for target in ("spec_cascade_attend", "spec_cascade_take_rows"):
    assert target in texts["on"] and target not in texts["off"]
  assert cpu_kernels.ATTENTION_KERNEL is True and cpu_kernels.LOOKUP_KERNEL is True


def test_before_after_of_a_numerics_change_checks_each_variant_against_its_verifier(capsys):
  """side_by_side.before_after(same_tokens=False) (bench/bf16_inputs.py): the variants may
  differ, each method must give its own variant's verifier-alone tokens, and the table says
  what share of tokens the two verifiers agree on."""
  import side_by_side  # pylint: disable=import-outside-toplevel
  a, b = np.array([[5, 6, 7, 1]]), np.array([[5, 6, 9, 1]])
  res = {("f32", "verifier alone"): (a, 2.0), ("f32", "SpecDecode γ 1"): (a, 1.0),
         ("bf16", "verifier alone"): (b, 1.0), ("bf16", "SpecDecode γ 1"): (b, 0.5)}
  names = ["verifier alone", "SpecDecode γ 1"]
  side_by_side.before_after(res, "f32", "bf16", names, ("x", "y"), same_tokens=False)
  out = capsys.readouterr().out
  assert "share (position by position): 0.750" in out
  assert "| SpecDecode γ 1 | 1.000 | 0.500 | 2.00× | 2.00× / 2.00× |" in out
  with pytest.raises(SystemExit, match="gives other tokens"):
    side_by_side.before_after(res, "f32", "bf16", names, ("x", "y"))
  res[("bf16", "SpecDecode γ 1")] = (a, 0.5)
  with pytest.raises(SystemExit, match="SpecDecode γ 1 gives other tokens than the verifier "
                                       "alone with bf16"):
    side_by_side.before_after(res, "f32", "bf16", names, ("x", "y"), same_tokens=False)
