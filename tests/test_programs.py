"""Bounded compilation: bucketed input shapes and the LRU of compiled decode programs."""
import numpy as np
import pytest

from pairs import make_pair, random_inputs
from spec_cascade import decoding, programs
from spec_cascade.decoding import generate

MAXLEN = 12


@pytest.fixture(scope="module")
def pair():
  return make_pair()


def test_length_and_batch_buckets():
  assert [programs.bucket_length(n) for n in (1, 64, 65, 128, 129, 256, 257, 4096, 4097)] == [
      64, 64, 128, 128, 256, 256, 512, 4096, 8192]
  assert [programs.bucket_batch(b) for b in (1, 2, 3, 5, 8, 9, 16, 17, 33)] == [
      1, 2, 4, 8, 8, 16, 16, 32, 48]
  # Inputs of 1–256 tokens at batch 1–16: 3 lengths × 5 batch sizes.
  shapes = {(programs.bucket_batch(b), programs.bucket_length(n))
            for b in range(1, 17) for n in range(1, 257)}
  assert len(shapes) == 15


def test_pad_to_buckets_appends_padding_columns_and_rows():
  x = np.zeros((3, 70), np.int32)
  x[0, :5] = 7
  x[2, :70] = 9
  padded, ids = programs.pad_to_buckets(x, np.array([4, 5, 6]))
  assert padded.shape == (4, 128) and ids.tolist() == [4, 5, 6, -1]
  np.testing.assert_array_equal(padded[:3, :70], x)
  assert not padded[3].any() and not padded[:, 70:].any()
  same = np.ones((4, 64), np.int32)
  assert programs.pad_to_buckets(same, np.arange(4))[0] is same


@pytest.mark.parametrize("method,rule,temperature,slots", [
    ("verifier", None, 0.0, None), ("spec_decode", None, 1.0, None),
    ("spec_cascade", "token_v3", 1.0, None), ("seq_cascade", None, 1.0, None),
    ("bild", None, 0.0, None), ("spec_decode", None, 1.0, 2), ("seq_cascade", None, 1.0, 2)])
def test_bucketed_shapes_keep_every_row_and_counter(pair, method, rule, temperature, slots):
  """3 rows (padded to 4, to 64 columns) decode to the tokens and counters of the exact shape,
  in one batch and streamed through 2 slots (the padding example is never queued)."""
  drafter, verifier = pair
  x = random_inputs(3, length=9, seed=3)
  kw = dict(method=method, rule=rule, alpha=0.6, temperature=temperature, num_draft_tokens=3,
            max_decode_length=MAXLEN, seed=2, example_ids=np.array([7, 1, 4]), slots=slots)
  bucketed = generate(drafter, verifier, x, **kw)
  exact = generate(drafter, verifier, x, bucket_shapes=False, **kw)
  np.testing.assert_array_equal(bucketed.tokens, exact.tokens)
  np.testing.assert_array_equal(bucketed.lengths, exact.lengths)
  for name, value in exact.counters.items():
    np.testing.assert_allclose(bucketed.counters[name], value, rtol=1e-5, err_msg=name)


def test_many_input_shapes_share_a_few_programs(pair):
  """Calls over input lengths 1–40 and batch sizes 1–5 compile ≤ 4 programs (1 length bucket ×
  batch buckets 1, 2, 4, 8), each holding one executable."""
  drafter, verifier = pair
  programs.PROGRAMS.clear()
  rng = np.random.default_rng(0)
  for _ in range(12):
    b, n = int(rng.integers(1, 6)), int(rng.integers(1, 41))
    x = rng.integers(2, 64, (b, n)).astype(np.int32)
    generate(drafter, verifier, x, method="verifier", temperature=0.0, max_decode_length=4)
  shapes = {key[-1] for key in programs.PROGRAMS.keys()}
  assert shapes <= {(1, 64), (2, 64), (4, 64), (8, 64)}
  assert programs.PROGRAMS.compiled_count() == len(programs.PROGRAMS) == len(shapes)


def test_trim_padding_drops_only_columns_that_are_padding_in_every_row():
  x = np.zeros((3, 300), np.int32)
  x[0, :5] = 7
  x[1, 3] = 0  # a padding id inside a row stays where it is
  x[1, :2] = 4
  x[1, 7] = 5
  out = programs.trim_padding(x)
  assert out.shape == (3, 8)
  np.testing.assert_array_equal(out, x[:, :8])
  assert programs.trim_padding(np.zeros((2, 9), np.int32)).shape == (2, 1)
  full = np.ones((2, 9), np.int32)
  assert programs.trim_padding(full) is full


@pytest.mark.parametrize("method", ["verifier", "spec_decode"])
def test_wide_padded_inputs_run_at_their_longest_rows_bucket(pair, method):
  """An input passed with 300 columns of which 9 are used decodes in the 64-column program,
  to the tokens of the unpadded input; bucket_shapes=False or trim_padding=False keep the
  width given."""
  drafter, verifier = pair
  x = random_inputs(2, length=9, seed=5)
  wide = np.zeros((2, 300), np.int32)
  wide[:, :9] = x
  kw = dict(method=method, temperature=0.0, num_draft_tokens=2, max_decode_length=MAXLEN)
  programs.PROGRAMS.clear()
  got = generate(drafter, verifier, wide, **kw)
  assert {key[-1] for key in programs.PROGRAMS.keys()} == {(2, 64)}
  np.testing.assert_array_equal(got.tokens, generate(drafter, verifier, x, **kw).tokens)
  generate(drafter, verifier, wide, bucket_shapes=False, **kw)
  assert (2, 300) in {key[-1] for key in programs.PROGRAMS.keys()}
  generate(drafter, verifier, wide, trim_padding=False, **kw)  # as the entry points call it
  assert (2, 512) in {key[-1] for key in programs.PROGRAMS.keys()}


def test_program_cache_evicts_least_recently_used(pair):
  drafter, verifier = pair
  cache = programs.PROGRAMS
  old = cache.capacity
  cache.clear()
  evicted = cache.evictions
  try:
    cache.set_capacity(2)
    x = random_inputs(1, seed=1)
    for gamma in (1, 2, 3):
      generate(drafter, verifier, x, method="spec_decode", num_draft_tokens=gamma,
               temperature=0.0, max_decode_length=4)
    assert len(cache) == 2 and cache.compiled_count() == 2
    assert cache.evictions == evicted + 1
    assert [k[3].num_draft_tokens for k in cache.keys()] == [2, 3]
  finally:
    cache.set_capacity(old)
  with pytest.raises(ValueError, match="positive int"):
    programs.set_capacity(0)


def test_memory_maps_are_counted_on_linux():
  maps = programs.memory_maps()
  if maps is None:
    pytest.skip("the kernel does not report memory maps here")
  mapped, limit = maps
  assert 0 < mapped < limit


def test_programs_are_dropped_before_a_compile_when_memory_maps_run_short(monkeypatch):
  """Each compiled CPU program holds many memory regions; LLVM aborts the process when the
  kernel's limit is reached, so a miss first drops the least recently used programs while over
  MAP_BUDGET of it — and nothing while under, or where the kernel does not say."""
  cache = programs.ProgramCache(capacity=10)
  cleared = []

  class Fn:
    def __init__(self, name):
      self.name = name

    def clear_cache(self):
      cleared.append(self.name)

  for name in "abcd":
    cache.get(name, lambda name=name: Fn(name))
  cache.get("a", lambda: pytest.fail("'a' is cached"))  # a hit: 'a' is now the newest
  mapped = {"n": 900}  # of 1,000: over the budget until two programs are gone

  def fake_maps():
    return mapped["n"], 1000

  def fake_evict(evict=cache._evict_one):  # pylint: disable=protected-access
    evict()
    mapped["n"] -= 200
  monkeypatch.setattr(programs, "memory_maps", fake_maps)
  monkeypatch.setattr(cache, "_evict_one", fake_evict)
  cache.get("e", lambda: Fn("e"))
  assert cleared == ["b", "c"] and cache.keys() == ["d", "a", "e"]
  cache.get("f", lambda: Fn("f"))  # 500 of 1,000: within the budget
  assert cleared == ["b", "c"] and len(cache) == 4
  monkeypatch.setattr(programs, "memory_maps", lambda: None)
  mapped["n"] = 10_000
  cache.get("g", lambda: Fn("g"))
  assert len(cache) == 5


@pytest.mark.parametrize("bad,match", [
    (np.array([[5, 64, 0]]), r"outside the vocabulary \[0, 64\): 64 at row 0, column 1"),
    (np.array([[5, 3], [-1, 0]]), r"-1 at row 1, column 0"),
    (np.zeros((0, 4), np.int32), "at least one row and one column"),
    (np.zeros((2, 0), np.int32), "at least one row and one column"),
    (np.ones((2, 3), np.float32), "integer token ids"),
    (np.ones((3,), np.int32), "integer token ids"),
])
def test_bad_inputs_are_refused_with_what_is_wrong(pair, bad, match):
  drafter, verifier = pair
  with pytest.raises(ValueError, match=match):
    generate(drafter, verifier, bad, method="spec_decode", max_decode_length=4)


def test_negative_example_ids_are_refused(pair):
  drafter, verifier = pair
  with pytest.raises(ValueError, match="example_ids must be non-negative"):
    generate(drafter, verifier, random_inputs(2), method="verifier", max_decode_length=4,
             example_ids=np.array([0, -3]))


def test_padding_rows_run_no_extra_blocks(pair):
  """A padding row starts finished: the loop stops when the real rows are done (the step
  count of a 3-row batch padded to 4 equals that of the exact shape)."""
  drafter, verifier = pair
  x = random_inputs(3, seed=5)
  spec = decoding.make_spec("verifier", max_decode_length=MAXLEN)
  knobs = decoding.make_knobs(spec, temperature=0.0)
  padded, ids = programs.pad_to_buckets(x, np.arange(3))
  res = decoding.decode(None, verifier.model, spec, None, verifier.params, padded, ids,
                        np.int32(0), knobs)
  assert res.lengths[3] == 0 and res.counters.verifier_calls[3] == 0
  exact = decoding.decode(None, verifier.model, spec, None, verifier.params, x,
                          np.arange(3, dtype=np.int32), np.int32(0), knobs)
  np.testing.assert_array_equal(res.tokens[:3], exact.tokens)
