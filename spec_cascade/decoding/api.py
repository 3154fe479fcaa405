"""The plain Python API of the engine: `generate`, and the validated spec / knobs it builds
(`make_spec`, `make_knobs`) for callers that build them once (infer, sweep)."""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from spec_cascade import autogamma, deferral, methods, parallel, pod, programs, sampling
from spec_cascade.decoding import contract
from spec_cascade.decoding.loops import compiled_decode, compiled_stream
from spec_cascade.decoding.state import COUNTER_FIELDS, EOS_ID, PAD_ID, Bundle, DecodeSpec, Knobs


@dataclasses.dataclass
class GenerateOutput:
  """tokens: int32 [B, max_decode_length] (0 after EOS); lengths: [B]; counters: name → [B];
  wall_s: wall-clock of the decode call (compilation excluded when warm).
  num_draft_tokens: the γ the speculative methods ran with (0: 'auto' chose the verifier
  alone; None for methods without blocks); gamma_choice: what 'auto' measured;
  warmup_s: seconds this call spent timing 'auto's candidates, beyond wall_s (0 once the
  choice is settled)."""
  tokens: np.ndarray
  lengths: np.ndarray
  counters: dict[str, np.ndarray]
  wall_s: float
  num_draft_tokens: int | None = None
  gamma_choice: autogamma.GammaChoice | None = None
  # Iterations of the longest loop the call ran (under a data-parallel mesh each device runs
  # its own loop; rows that exist only as padding start finished and add none).
  loop_steps: int | None = None
  warmup_s: float = 0.0


def resolve_rule(method: str, rule: str | None) -> str | None:
  """The rule a method runs with (`Method.rules` / `default_rule`); ValueError when the pair
  makes no sense."""
  m = methods.get(method)
  if m.rules == ():
    if rule is not None:
      raise ValueError(f"method {method!r} takes no deferral rule (got rule={rule!r}).")
    return None
  if m.rules is not methods.ANY_RULE:
    if rule not in (None,) + m.rules:
      raise ValueError(m.rule_error.format(method=method, rule=rule, want=m.default_rule))
    return rule or m.default_rule
  rule = rule or m.default_rule
  if rule is None:
    raise ValueError(f"method {method!r} needs a rule: one of "
                     f"{', '.join(sorted(deferral.RULES))}.")
  deferral.get_rule(rule)
  return rule


def make_spec(method: str, rule: str | None = None, *, num_draft_tokens: int | None = 5,
              max_decode_length: int = 64, top_k: int = 0, beta: float | None = None,
              token_cascade_window: int = 8, bild_max_window: int = 10,
              shrink_batch: bool = True, dynamic_draft: bool = False,
              eos_id: int = EOS_ID, rule_set=None) -> DecodeSpec:
  """Validated DecodeSpec (the static part of a decode).

  rule_set: rules to compile into one program with `rule` (which must be among them); the
  spec then names no rule and `make_knobs(rule=...)` picks one at run time."""
  rule = resolve_rule(method, rule)
  rule_set = _check_rule_set(method, rule, rule_set)
  blocks = methods.get(method).gamma == methods.GAMMA_BLOCK
  if dynamic_draft and not blocks:
    raise ValueError(f"draft_confidence (dynamic draft length) applies to the speculative "
                     f"methods ({', '.join(sorted(methods.BLOCK_METHODS))}); method {method!r} "
                     "drafts no blocks.")
  checks = [("max_decode_length", max_decode_length, 1),
            ("token_cascade_window", token_cascade_window, 1),
            ("bild_max_window", bild_max_window, 1), ("eos_id", eos_id, 0)]
  # Where γ does not apply None means "no γ"; any other value is still checked, so a caller's
  # bad γ is an error whichever method it goes with.
  if blocks or num_draft_tokens is not None:
    checks.insert(0, ("num_draft_tokens", num_draft_tokens, 1))
  for name, v, lo in checks:
    if not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name} must be an int ≥ {lo}, got {v!r}.")
  return DecodeSpec(method=method, rule=None if rule_set else rule, rule_set=rule_set,
                    num_draft_tokens=int(num_draft_tokens) if blocks else None,
                    max_decode_length=int(max_decode_length),
                    top_k=sampling.validate_top_k(top_k), solve_beta=beta is None,
                    token_cascade_window=int(token_cascade_window),
                    bild_max_window=int(bild_max_window), shrink_batch=bool(shrink_batch),
                    dynamic_draft=bool(dynamic_draft), eos_id=int(eos_id))


def make_knobs(spec: DecodeSpec, *, alpha: float = 0.0, beta: float | None = None,
               temperature: float = 1.0, top_p: float = 1.0, fallback_threshold: float = 0.6,
               rollback_threshold: float = 3.0, draft_confidence: float | None = None,
               rule: str | None = None) -> Knobs:
  """Validated traced knobs. rule: which of `spec.rule_set` to run (required with a rule
  set; otherwise it must be None or the spec's rule)."""
  sampling.validate_sampling_params(temperature, spec.top_k, top_p)
  if draft_confidence is not None and not 0.0 <= float(draft_confidence) <= 1.0:
    raise ValueError(f"draft_confidence must be in [0, 1] (a probability), got "
                     f"{draft_confidence!r}.")
  if spec.rule_set:
    if rule not in spec.rule_set:
      raise ValueError(f"rule {rule!r} is not in the program's rule_set {spec.rule_set}; "
                       "pass make_knobs(rule=...) one of them.")
    rule_index = spec.rule_set.index(rule)
  else:
    if rule is not None and rule != spec.rule:
      raise ValueError(f"rule {rule!r} differs from the spec's rule {spec.rule!r}; only a "
                       "spec made with rule_set picks its rule at run time.")
    rule, rule_index = spec.rule, 0
  if rule is not None and methods.get(spec.method).alpha is not None:
    deferral.validate_alpha(rule, alpha)
    deferral.validate_beta(rule, alpha, beta)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return Knobs(alpha=f32(alpha), beta=f32(1.0 if beta is None else beta),
               temperature=f32(temperature), top_p=f32(top_p),
               fallback_threshold=f32(fallback_threshold),
               rollback_threshold=f32(rollback_threshold),
               draft_confidence=f32(0.0 if draft_confidence is None else draft_confidence),
               rule_index=jnp.asarray(rule_index, jnp.int32))


def _check_rule_set(method: str, rule: str | None, rule_set) -> tuple[str, ...]:
  """rule_set as a tuple of distinct rules `method` takes, `rule` among them; () for None."""
  if rule_set is None or len(rule_set) == 0:
    return ()
  if isinstance(rule_set, str):
    raise ValueError(f"rule_set must be a sequence of rule names, got the string {rule_set!r}.")
  if methods.get(method).rules is not methods.ANY_RULE:
    raise ValueError(f"rule_set applies to methods that take a choice of rule (spec_cascade, "
                     f"oracle); method {method!r} runs one fixed program.")
  names = tuple(resolve_rule(method, r) for r in rule_set)
  if len(set(names)) != len(names):
    raise ValueError(f"rule_set names a rule twice: {rule_set!r}.")
  if "verifier" in names:
    raise ValueError("rule_set cannot hold 'verifier': SpecDecode's program differs (it skips "
                     "the block's last drafter step); decode it with method='spec_decode'.")
  if rule not in names:
    raise ValueError(f"rule {rule!r} is not in rule_set {names}; add it or leave rule_set "
                     "out.")
  return names


def _check_inputs(inputs, vocab_size: int | None = None) -> np.ndarray:
  """inputs as int32 [B, S]; ValueError naming what is wrong for anything else (wrong rank or
  dtype, no rows or columns, token ids outside [0, vocab_size))."""
  arr = np.asarray(inputs)
  if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
    raise ValueError(f"inputs must be integer token ids [batch, length], got dtype {arr.dtype} "
                     f"shape {arr.shape}.")
  if arr.dtype == bool:
    raise ValueError("inputs must be integer token ids [batch, length], got a bool array.")
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"inputs must hold at least one row and one column, got shape "
                     f"{arr.shape}; pad an empty input to one column of 0 (padding).")
  if vocab_size is not None:
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
      row, col = map(int, np.argwhere(bad)[0])
      raise ValueError(f"inputs hold token ids outside the vocabulary [0, {vocab_size}): "
                       f"{int(arr[row, col])} at row {row}, column {col} "
                       f"({int(bad.sum())} such ids). Tokenise with the pair's vocabulary; "
                       "use 0 for padding.")
  return arr.astype(np.int32)


def _decodable_inputs(inputs, drafter, verifier, config: DecodeConfig) -> np.ndarray:
  """`_check_inputs` against the pair's vocabulary, then the all-padding columns dropped
  where the config trims (`trim_padding` with `bucket_shapes`)."""
  arr = _check_inputs(inputs, _vocab_size(drafter, verifier))
  if config.bucket_shapes and config.trim_padding:
    arr = programs.trim_padding(arr, pad_id=PAD_ID)
  return arr


def eos_id_of(drafter: Bundle | None, verifier: Bundle | None) -> int:
  """The EOS id the pair's configs name (`eos_id`; T5 configs have none: 1); ValueError
  when the two disagree."""
  ids = {int(getattr(b.model.config, "eos_id", EOS_ID)) for b in (drafter, verifier)
         if b is not None}
  if len(ids) > 1:
    raise ValueError(f"The drafter and the verifier end sequences with different EOS ids "
                     f"{sorted(ids)}: a pair needs one vocabulary and one EOS.")
  return ids.pop() if ids else EOS_ID


def _vocab_size(drafter: Bundle | None, verifier: Bundle | None) -> int | None:
  sizes = [b.model.config.vocab_size for b in (drafter, verifier) if b is not None]
  return min(sizes) if sizes else None


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Every setting of a decode but the inputs, their ids and the mesh, validated once.

  Made once per operating point by the entry points (infer, sweep, calibrate) and by
  `generate` from its keywords; it builds the `DecodeSpec` (static: the compiled program's
  key) and the `Knobs` (traced: an α or temperature sweep reuses the program) a decode runs
  with. Fields are `generate`'s keywords (see there). `dataclasses.replace` re-validates.
  """
  method: str
  rule: str | None = None
  alpha: float = 0.0
  beta: float | None = None
  num_draft_tokens: int | str | None = 5
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  max_decode_length: int = 64
  fallback_threshold: float = 0.6
  rollback_threshold: float = 3.0
  bild_max_window: int = 10
  token_cascade_window: int = 8
  shrink_batch: bool = True
  slots: int | None = None
  draft_candidates: tuple[int, ...] = autogamma.DEFAULT_CANDIDATES
  auto_warmup_rows: int = autogamma.DEFAULT_WARMUP_ROWS
  draft_confidence: float | None = None
  bucket_shapes: bool = True
  trim_padding: bool = True
  rule_set: tuple[str, ...] | None = None
  share_encoder: bool = True

  def __post_init__(self):
    autogamma.check(self.num_draft_tokens, self.method)
    if self.rule_set is not None and not isinstance(self.rule_set, str):
      object.__setattr__(self, "rule_set", tuple(self.rule_set))
    if self.slots is not None and (not isinstance(self.slots, (int, np.integer))
                                   or self.slots < 1):
      raise ValueError(f"slots must be a positive int (rows decoded at a time), got "
                       f"{self.slots!r}.")
    if self.auto:
      candidates = tuple(self.draft_candidates)
      if not candidates or any(not isinstance(g, (int, np.integer)) or g < 1
                               for g in candidates):
        raise ValueError(f"draft_candidates must be positive ints, got {candidates!r}.")
      if not isinstance(self.auto_warmup_rows, (int, np.integer)) or self.auto_warmup_rows < 1:
        raise ValueError(f"auto_warmup_rows must be a positive int (rows 'auto' times before "
                         f"its choice is kept), got {self.auto_warmup_rows!r}.")
    # 'auto' is checked with γ = 1 here (every rule and knob but γ); each γ it tries makes
    # its own spec.
    spec = make_spec(self.method, self.rule,
                     num_draft_tokens=1 if self.auto else self.num_draft_tokens,
                     max_decode_length=self.max_decode_length, top_k=self.top_k,
                     beta=self.beta, token_cascade_window=self.token_cascade_window,
                     bild_max_window=self.bild_max_window, shrink_batch=self.shrink_batch,
                     dynamic_draft=self.draft_confidence is not None,
                     rule_set=self.rule_set)
    knobs = make_knobs(spec, alpha=self.alpha, beta=self.beta, temperature=self.temperature,
                       top_p=self.top_p, fallback_threshold=self.fallback_threshold,
                       rollback_threshold=self.rollback_threshold,
                       draft_confidence=self.draft_confidence,
                       rule=resolve_rule(self.method, self.rule))
    object.__setattr__(self, "_spec", None if self.auto else spec)
    object.__setattr__(self, "_knobs", knobs)

  @property
  def auto(self) -> bool:
    return self.num_draft_tokens == autogamma.AUTO

  @property
  def spec(self) -> DecodeSpec | None:
    """The compiled program's spec (EOS id 1; `generate` sets the pair's); None for 'auto'."""
    return self._spec  # pylint: disable=no-member

  @property
  def knobs(self) -> Knobs:
    return self._knobs  # pylint: disable=no-member

  def program_key(self, shape: tuple[int, int]) -> tuple:
    """What identifies a compiled program for inputs of this shape: points with equal keys
    share one compilation (γ 'auto' keys by its candidates)."""
    spec = self.spec if not self.auto else (self.method, self.rule_set or self.rule,
                                            self.draft_candidates)
    return (spec, tuple(shape), self.slots)

  def record(self) -> dict:
    """The settings as a plain dict (results' "engine" record)."""
    return dataclasses.asdict(self)


@functools.lru_cache(maxsize=256)
def _cached_config(items: tuple) -> DecodeConfig:
  return DecodeConfig(**dict(items))


def _config_of(settings: dict) -> DecodeConfig:
  """`DecodeConfig(**settings)`, built once per distinct settings: validating and making the
  knobs took ~0.7 ms, a tenth of a drafter-alone call at batch 1, on every keyword call in a
  loop. Settings with an unhashable value (a list) are built each time."""
  try:
    return _cached_config(tuple(sorted(settings.items())))
  except TypeError:
    return DecodeConfig(**settings)


def generate(drafter: Bundle | None, verifier: Bundle | None, inputs,
             config: DecodeConfig | None = None, *, example_ids=None, mesh=None,
             **settings) -> GenerateOutput:
  """Decodes `inputs` [B, S]; see the package docstring for the methods.

  Settings come as a `DecodeConfig` or as its fields by keyword (method=..., alpha=...),
  not both:
  drafter / verifier: `Bundle(model, params)`, a T5Model or a DecoderOnlyModel each (either
  may be None when the method does not use it); the two share one vocabulary and EOS id.
  inputs: encoder tokens for a T5 model, right-padded prompts (BOS included, 0 after the
  last token) for a decoder-only one; a mixed pair reads the same ids both ways
  (`decoding.contract`).
  alpha, beta, temperature, top_p and the BiLD thresholds are traced: changing them
  reuses the compiled program. example_ids [B] (default 0..B-1) seed each row's randomness.
  mesh: optional `jax.sharding.Mesh` with 'data' and 'model' axes; the batch is split over
  'data' (padded to a multiple of its size). Data parallel ('model' of size 1): each device
  decodes rows d, d + D, ... in its own loop (`loops.jit_on_mesh`), stopping when its rows
  are done. With 'model' > 1 the parameters are split by the `spec_cascade.parallel` rules
  and XLA partitions one loop over the mesh.
  rule_set: several rules (of spec_cascade or the oracle), `rule` among them, compiled into
  one program that picks `rule` at run time: a sweep over these rules compiles once (each
  rule's outputs as with its own program).
  shrink_batch: a batch of ≥ 16 rows goes on as a quarter-size batch once at most that many
  rows are still decoding (`stage_sizes`; outputs unchanged, compilation ×2); False keeps the
  whole batch in every call.
  slots: decode the B inputs through this many rows at a time (continuous batching,
  `decode_stream`): a finished row's slot takes the next input at once, so no step waits for a
  batch's slowest row. Same outputs as without. With a mesh (data
  parallel only), slots must be a multiple of its 'data' size: each device streams its share.
  num_draft_tokens='auto' (speculative methods): calls time every γ in draft_candidates on
  their inputs (and SpecDecode also the verifier alone) and return the output of the one
  fastest so far, until auto_warmup_rows rows have been timed (slow γ dropped on the way);
  later calls with the same settings and shapes run the settled choice (`autogamma`).
  draft_confidence (speculative methods): a dynamic draft length — a row stops drafting after
  the first draft at which the drafter's top probability is below this value, so a block
  proposes 1..γ drafts (HF's assistant_confidence_threshold, BiLD's fallback); drafter calls no
  row needs are skipped. Outputs keep the target's distribution exactly. None: always γ.
  share_encoder: when the drafter's encoder and token embedding are the verifier's
  (`contract.shares_encoder`: a drafter cut from the verifier with those frozen), encode each
  input once, with the verifier's; the outputs are the same either way. False: each model
  encodes for itself.
  bucket_shapes: pad inputs to a bucketed [batch, length] (`spec_cascade.programs`), so that
  calls over many input shapes share a few compiled programs; the compiled programs a process
  keeps are bounded either way (`programs.set_capacity`). Padding changes no output beyond
  float rounding. False compiles for the exact shape given.
  trim_padding: with bucket_shapes, first drop the columns that are padding in every row
  (`programs.trim_padding`), so that no encoder runs over more padding than its bucket's (an
  input of 20 tokens passed as [1, 256] decoded 1.9× faster trimmed). False keeps the width
  given, so that calls padded alike share one program (the entry points do: `infer`).
  Token ids must lie in [0, vocab size); 0 is padding.
  """
  if config is None:
    config = _config_of(settings)
  elif settings:
    raise TypeError(f"generate() got a DecodeConfig and settings {sorted(settings)}: pass "
                    "them in the config (dataclasses.replace(config, ...)).")
  if config.auto:
    return _generate_auto(drafter, verifier, inputs, config, example_ids, mesh)
  m = methods.get(config.method)
  if m.uses_drafter and drafter is None:
    raise ValueError(f"method {config.method!r} needs a drafter Bundle(model, params).")
  if m.uses_verifier and verifier is None:
    raise ValueError(f"method {config.method!r} needs a verifier Bundle(model, params).")
  use_d = drafter if m.uses_drafter else None
  use_v = verifier if m.uses_verifier else None
  spec = dataclasses.replace(
      config.spec, eos_id=eos_id_of(use_d, use_v),
      shared_encoder=bool(config.share_encoder) and contract.shares_encoder(use_d, use_v))
  inputs = _decodable_inputs(inputs, drafter, verifier, config)
  batch = inputs.shape[0]
  ids = np.arange(batch) if example_ids is None else np.asarray(example_ids)
  if ids.shape != (batch,):
    raise ValueError(f"example_ids must have shape ({batch},), got {ids.shape}.")
  if not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
    raise ValueError(f"example_ids must be non-negative ints (they seed each row's draws), "
                     f"got {ids!r}.")
  if drafter is not None and verifier is not None:
    dv, vv = drafter.model.config.vocab_size, verifier.model.config.vocab_size
    if dv != vv:
      raise ValueError(f"drafter vocab_size {dv} != verifier vocab_size {vv}: speculative and "
                       "cascade methods need one shared vocabulary.")
  slots = config.slots
  stream = slots is not None and slots < batch
  if stream and mesh is not None:
    parallel.check_stream_mesh(mesh, slots)
  d_params = use_d.params if use_d else None
  v_params = use_v.params if use_v else None
  ids = ids.astype(np.int32)
  if config.bucket_shapes:
    # A stream's queue (N examples) is bucketed like a batch; its slots stay as given.
    inputs, ids = programs.pad_to_buckets(inputs, ids, pad_id=PAD_ID)
  order, per_device = None, mesh is not None and mesh.shape["model"] == 1
  if mesh is not None:
    if per_device:
      # Device d decodes rows d, d + D, ...: inputs sorted by length spread evenly.
      inputs, ids, order = parallel.interleave_batch(mesh, inputs, ids)
    else:
      inputs, ids, _ = parallel.pad_batch(mesh, inputs, ids)
    inputs, ids = parallel.shard_batch(mesh, inputs), parallel.shard_batch(mesh, ids)
    d_params = parallel.shard_params(mesh, d_params) if d_params is not None else None
    v_params = parallel.shard_params(mesh, v_params) if v_params is not None else None
  configs = (use_d.model.config if use_d else None, use_v.model.config if use_v else None)
  # The mesh goes in only when set: the program cache keys f(x) and f(x, None) apart.
  on = (mesh,) if per_device else ()
  shape = tuple(inputs.shape)
  fn = (compiled_stream(*configs, spec, int(slots), *on, shape=shape) if stream
        else compiled_decode(*configs, spec, *on, shape=shape))
  # Host arrays go to the jitted call as they are (its C++ path moves them to the device): a
  # jnp.asarray per argument cost ~0.2 ms each, a tenth of a drafter-alone call at batch 1.
  seed = np.int32(config.seed)
  t0 = time.perf_counter()
  res = jax.block_until_ready(fn(d_params, v_params, inputs, ids, seed, config.knobs))
  wall = time.perf_counter() - t0
  # Back to the input order; rows past `batch` are the mesh's padding.
  back = slice(None) if order is None else np.argsort(order)
  rows = lambda x: pod.to_host(x)[back][:batch]
  counters = {f: rows(getattr(res.counters, f)) for f in COUNTER_FIELDS}
  return GenerateOutput(tokens=rows(res.tokens), lengths=rows(res.lengths), counters=counters,
                        wall_s=wall, num_draft_tokens=spec.num_draft_tokens,
                        loop_steps=int(pod.to_host(res.steps).max()))


def _generate_auto(drafter, verifier, inputs, config: DecodeConfig, example_ids,
                   mesh) -> GenerateOutput:
  """generate(num_draft_tokens='auto'): measure (once per settings and shape), then decode."""
  if drafter is None or verifier is None:
    raise ValueError(f"method {config.method!r} needs a drafter and a verifier "
                     "Bundle(model, params).")
  inputs = _decodable_inputs(inputs, drafter, verifier, config)
  slots = config.slots
  timing = {k: v for k, v in config.record().items()
            if k not in ("seed", "rule", "method", "draft_candidates", "auto_warmup_rows")}
  # Calls that run one compiled program share one choice: key on the bucketed shape.
  shape = programs.bucketed_shape(*inputs.shape) if config.bucket_shapes else inputs.shape
  key = autogamma.choice_key(drafter, verifier, config.method, config.rule, shape,
                             candidates=tuple(config.draft_candidates), mesh=mesh, **timing)
  as_verifier = lambda c: dataclasses.replace(c, method="verifier", rule=None, rule_set=None,
                                              num_draft_tokens=None, draft_confidence=None)
  choice, spent = autogamma.cached(key), 0.0
  if choice is None:
    # Warm-up on the first `slots` rows when streaming (the rows a step decodes at a time).
    rows = slots if slots is not None and slots < inputs.shape[0] else inputs.shape[0]
    ids = (np.arange(inputs.shape[0]) if example_ids is None
           else np.asarray(example_ids))[:rows]
    warm = dataclasses.replace(config, slots=None, num_draft_tokens=1)

    def run(gamma: int) -> GenerateOutput:
      one = (as_verifier(warm) if gamma == 0
             else dataclasses.replace(warm, num_draft_tokens=int(gamma)))
      return generate(drafter if gamma else None, verifier, inputs[:rows], one,
                      example_ids=ids, mesh=mesh)

    t0 = time.perf_counter()
    choice, lead = autogamma.warm_up_batch(
        key, run, tuple(config.draft_candidates),
        include_verifier=methods.get(config.method).lossless, rows=rows,
        warmup_rows=config.auto_warmup_rows)
    spent = time.perf_counter() - t0
    if rows == inputs.shape[0]:
      # The leader decoded exactly this call (same rows, ids, settings but γ): reuse it.
      return dataclasses.replace(lead, num_draft_tokens=choice.gamma, gamma_choice=choice,
                                 warmup_s=max(spent - lead.wall_s, 0.0))
  gamma = choice.gamma
  if gamma == 0:
    out = generate(None, verifier, inputs, as_verifier(config), example_ids=example_ids,
                   mesh=mesh)
  else:
    out = generate(drafter, verifier, inputs,
                   dataclasses.replace(config, num_draft_tokens=gamma),
                   example_ids=example_ids, mesh=mesh)
  return dataclasses.replace(out, num_draft_tokens=gamma, gamma_choice=choice,
                             warmup_s=spent)
