"""Training batches for `spec_cascade.train`: tokenize, truncate (counted), bucket, shuffle.

Two sources feed the trainer through one protocol (`BatchSource`):

* `OfflineBatches` — pure Python/numpy (no TensorFlow). Examples from
  `spec_cascade.data.offline.load_split` are tokenized with a SentencePiece
  tokenizer, truncated to the task feature lengths (every truncation is
  counted and logged), terminated by EOS, and grouped into length buckets
  inside shuffled windows so that padding does not dominate the compute.
  The batch at position p is a pure function of (examples, seed, p): a
  resumed run asks for position `step` and continues exactly.
* `SeqioBatches` — the paper tasks through seqio (`get_dataset` +
  `EncDecFeatureConverter`), imported lazily; resumed by skipping batches.

A batch is a dict of numpy arrays named like seqio's EncDecFeatureConverter
outputs: encoder_input_tokens [B, S] int32, decoder_input_tokens [B, T] int32
(targets shifted right, BOS = 0), decoder_target_tokens [B, T] int32,
decoder_loss_weights [B, T] float32 (1 on real target tokens, 0 on padding).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

PAD_ID = 0
EOS_ID = 1
FEATURE_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                "decoder_loss_weights")

# Tasks served by the offline (no TensorFlow) path, and mixtures of them. The
# seqio registry in spec_cascade.data.tasks defines the same names.
OFFLINE_TASKS = ("debian_ende", "debian_summarize")
OFFLINE_MIXTURES = {"debian_mix": OFFLINE_TASKS}

Batch = dict[str, np.ndarray]


class Tokenizer(Protocol):
  """What the offline path needs from a tokenizer (SentencePieceTokenizer has it)."""
  vocab_size: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class BatchSource(Protocol):
  """Global batches from a data position on. Position p is the p-th batch of the
  stream; the trainer consumes one per step, so position == step."""
  batch_size: int

  def iterate(self, start_position: int = 0) -> Iterator[Batch]: ...


# ---------------------------------------------------------------------------
# Tokenization and truncation

@dataclasses.dataclass
class TruncationStats:
  """How many sequences were cut to fit the feature lengths (never silently)."""
  examples: int = 0
  inputs_truncated: int = 0
  targets_truncated: int = 0
  inputs_tokens_dropped: int = 0
  targets_tokens_dropped: int = 0

  def log(self, name: str) -> None:
    if not self.examples:
      return
    msg = (f"[{name}] {self.examples} examples: truncated inputs in {self.inputs_truncated} "
           f"({100 * self.inputs_truncated / self.examples:.2f}%, "
           f"{self.inputs_tokens_dropped} tokens dropped), targets in "
           f"{self.targets_truncated} ({100 * self.targets_truncated / self.examples:.2f}%, "
           f"{self.targets_tokens_dropped} tokens dropped).")
    (log.warning if self.inputs_truncated or self.targets_truncated else log.info)(msg)


def check_feature_lengths(feature_lengths: Mapping[str, int]) -> dict[str, int]:
  """Validates TASK_FEATURE_LENGTHS: {"inputs": S, "targets": T}, both ints >= 2."""
  if not isinstance(feature_lengths, Mapping) or set(feature_lengths) != {"inputs", "targets"}:
    raise ValueError(f"TASK_FEATURE_LENGTHS must be a dict with keys 'inputs' and 'targets', "
                     f"e.g. {{'inputs': 128, 'targets': 64}}; got {feature_lengths!r}.")
  out = {}
  for key, value in feature_lengths.items():
    if not isinstance(value, (int, np.integer)) or value < 2:
      raise ValueError(f"TASK_FEATURE_LENGTHS[{key!r}]={value!r} must be an int >= 2 (room "
                       "for at least one token and EOS).")
    out[key] = int(value)
  return out


def _trim_and_eos(ids: Sequence[int], length: int) -> tuple[np.ndarray, int]:
  """Cuts to length-1 tokens then appends EOS (seqio's append_eos_after_trim), so
  every sequence ends in EOS. Returns (int32 array <= length, tokens dropped)."""
  ids = [int(i) for i in ids]
  dropped = max(0, len(ids) - (length - 1))
  return np.asarray(ids[:length - 1] + [EOS_ID], np.int32), dropped


def tokenize_examples(examples: Iterable[Mapping[str, Any]], tokenizer: Tokenizer,
                      feature_lengths: Mapping[str, int], name: str = "data"
                      ) -> tuple[list[np.ndarray], list[np.ndarray], TruncationStats]:
  """Examples {"inputs": str, "targets": str, ...} → (inputs, targets) int32 arrays,
  each ending in EOS and no longer than its feature length; the stats count cuts."""
  lengths = check_feature_lengths(feature_lengths)
  stats = TruncationStats()
  inputs, targets = [], []
  for i, ex in enumerate(examples):
    if "inputs" not in ex or "targets" not in ex:
      raise ValueError(f"[{name}] example {i} lacks 'inputs'/'targets' (keys: {sorted(ex)}).")
    for key, out in (("inputs", inputs), ("targets", targets)):
      ids = tokenizer.encode(ex[key])
      if any(t in (PAD_ID, EOS_ID) for t in ids):
        raise ValueError(f"[{name}] example {i}: the tokenizer produced pad/EOS ids inside "
                         f"{key!r}; encode() must not append EOS or emit id 0.")
      arr, dropped = _trim_and_eos(ids, lengths[key])
      out.append(arr)
      if dropped:
        setattr(stats, f"{key}_truncated", getattr(stats, f"{key}_truncated") + 1)
        setattr(stats, f"{key}_tokens_dropped",
                getattr(stats, f"{key}_tokens_dropped") + dropped)
    stats.examples += 1
  stats.log(name)
  return inputs, targets, stats


# ---------------------------------------------------------------------------
# Batching

def default_boundaries(max_length: int, smallest: int = 16) -> tuple[int, ...]:
  """Powers of two from `smallest` below max_length, then max_length itself.
  Few boundaries keep the number of compiled shapes small (≤ 4 × 3 for 128/64)."""
  out, b = [], smallest
  while b < max_length:
    out.append(b)
    b *= 2
  return tuple(out) + (int(max_length),)


def _bucket(length: int, boundaries: Sequence[int]) -> int:
  for b in boundaries:
    if length <= b:
      return b
  return boundaries[-1]


def make_batch(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], batch_size: int,
               input_length: int, target_length: int) -> Batch:
  """Pads `len(inputs) <= batch_size` examples into a [batch_size, ...] batch;
  missing rows are all padding with zero loss weight."""
  n = len(inputs)
  if n > batch_size:
    raise ValueError(f"{n} examples do not fit a batch of {batch_size}.")
  enc = np.zeros((batch_size, input_length), np.int32)
  tgt = np.zeros((batch_size, target_length), np.int32)
  for r in range(n):
    enc[r, :len(inputs[r])] = inputs[r]
    tgt[r, :len(targets[r])] = targets[r]
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt != PAD_ID).astype(np.float32)}


class OfflineBatches:
  """Deterministic, resumable, length-bucketed batches over tokenized examples.

  Training (shuffle=True): each epoch e permutes the examples with
  rng(seed, e), keeps the first (N // B) * B, cuts them into windows of
  `window_batches` batches, sorts each window by (input bucket, target
  length) and slices it into batches; then the epoch's batches are shuffled.
  Each batch is padded to the smallest boundary that holds its longest
  sequence. `batch_at(p)` depends only on (data, seed, p).

  Evaluation (shuffle=False): one pass over all examples in length order,
  the last batch padded with empty rows.
  """

  def __init__(self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray],
               batch_size: int, feature_lengths: Mapping[str, int], *, seed: int = 0,
               shuffle: bool = True, window_batches: int = 64,
               input_boundaries: Sequence[int] | None = None,
               target_boundaries: Sequence[int] | None = None, bucket: bool = True):
    lengths = check_feature_lengths(feature_lengths)
    if len(inputs) != len(targets):
      raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if shuffle and len(inputs) < batch_size:
      raise ValueError(f"Only {len(inputs)} training examples for BATCH_SIZE={batch_size}; "
                       "use a smaller batch size or more data.")
    if window_batches < 1:
      raise ValueError(f"window_batches must be >= 1, got {window_batches}.")
    self.inputs, self.targets = list(inputs), list(targets)
    self.batch_size = int(batch_size)
    self.seed, self.shuffle, self.window_batches = int(seed), shuffle, int(window_batches)
    self.input_length, self.target_length = lengths["inputs"], lengths["targets"]
    if bucket:
      self.input_boundaries = tuple(input_boundaries or default_boundaries(self.input_length))
      self.target_boundaries = tuple(target_boundaries or
                                     default_boundaries(self.target_length))
    else:  # fixed shapes (one compilation), e.g. on TPU
      self.input_boundaries, self.target_boundaries = (self.input_length,), (self.target_length,)
    for name, bounds, top in (("input", self.input_boundaries, self.input_length),
                              ("target", self.target_boundaries, self.target_length)):
      if list(bounds) != sorted(bounds) or bounds[-1] != top:
        raise ValueError(f"{name}_boundaries {bounds} must be increasing and end at the "
                         f"feature length {top}.")
    self._in_len = np.array([len(x) for x in self.inputs], np.int64)
    self._tgt_len = np.array([len(x) for x in self.targets], np.int64)
    if len(self.inputs) and (self._in_len.max() > self.input_length or
                             self._tgt_len.max() > self.target_length):
      raise ValueError("Sequences longer than the feature lengths: tokenize with "
                       "tokenize_examples(), which truncates them.")
    self._in_bucket = np.array([_bucket(n, self.input_boundaries) for n in self._in_len])
    self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

  @property
  def num_examples(self) -> int:
    return len(self.inputs)

  @property
  def batches_per_epoch(self) -> int:
    if self.shuffle:
      return self.num_examples // self.batch_size
    return -(-self.num_examples // self.batch_size)

  def _sorted_batches(self, order: np.ndarray, window: int) -> list[np.ndarray]:
    out = []
    for start in range(0, len(order), window):
      idx = order[start:start + window]
      # lexsort: last key is primary. Stable, so ties keep the (shuffled) order.
      idx = idx[np.lexsort((self._tgt_len[idx], self._in_bucket[idx]))]
      out.extend(idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size))
    return out

  def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
    if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
      return self._epoch_cache[1]
    if self.shuffle:
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(self.num_examples)[:self.batches_per_epoch * self.batch_size]
      batches = self._sorted_batches(order, self.window_batches * self.batch_size)
      batches = [batches[i] for i in rng.permutation(len(batches))]
    else:
      batches = self._sorted_batches(np.arange(self.num_examples), max(1, self.num_examples))
    self._epoch_cache = (epoch, batches)
    return batches

  def batch_indices(self, position: int) -> np.ndarray:
    """Example indices of the batch at `position` (shuffle=False: one pass only)."""
    if position < 0:
      raise ValueError(f"position must be >= 0, got {position}.")
    epoch, i = divmod(position, self.batches_per_epoch)
    if not self.shuffle and epoch > 0:
      raise IndexError(f"Evaluation data has {self.batches_per_epoch} batches; asked for "
                       f"position {position}.")
    return self._epoch_plan(epoch)[i]

  def batch_at(self, position: int) -> Batch:
    idx = self.batch_indices(position)
    s = _bucket(int(self._in_len[idx].max()), self.input_boundaries)
    t = _bucket(int(self._tgt_len[idx].max()), self.target_boundaries)
    return make_batch([self.inputs[i] for i in idx], [self.targets[i] for i in idx],
                      self.batch_size, s, t)

  def iterate(self, start_position: int = 0) -> Iterator[Batch]:
    p = start_position
    while self.shuffle or p < self.batches_per_epoch:
      yield self.batch_at(p)
      p += 1

  def padding_fraction(self, epoch: int = 0) -> float:
    """Fraction of token slots (encoder + decoder) that are padding over one epoch."""
    real = slots = 0
    for idx in self._epoch_plan(epoch):
      s = _bucket(int(self._in_len[idx].max()), self.input_boundaries)
      t = _bucket(int(self._tgt_len[idx].max()), self.target_boundaries)
      real += int(self._in_len[idx].sum() + self._tgt_len[idx].sum())
      slots += self.batch_size * (s + t)
    return 1.0 - real / max(1, slots)


# ---------------------------------------------------------------------------
# Offline tasks (spec_cascade.data; imported lazily)

def offline_task_names(name: str) -> tuple[str, ...] | None:
  """The offline tasks behind a task or mixture name, or None if not offline."""
  if name in OFFLINE_TASKS:
    return (name,)
  return OFFLINE_MIXTURES.get(name)


def load_offline_examples(name: str, split: str, cache_dir: str | None = None,
                          max_examples: int | None = None) -> list[dict]:
  """Examples of an offline task or mixture (a mixture concatenates its tasks, so
  each task contributes in proportion to its size; ids keep their task)."""
  tasks = offline_task_names(name)
  if tasks is None:
    raise ValueError(f"{name!r} is not an offline task; offline tasks: {list(OFFLINE_TASKS)}, "
                     f"mixtures: {list(OFFLINE_MIXTURES)}.")
  try:
    from spec_cascade.data import offline  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("The offline tasks need spec_cascade.data.offline, which failed to "
                      f"import: {e}") from e
  examples = []
  for task in tasks:
    part = list(offline.load_split(task, split, cache_dir=cache_dir))
    if max_examples is not None:
      part = part[:max_examples]
    examples.extend(dict(ex, task=task) for ex in part)
  return examples


def load_offline_tokenizer(vocab_path: str | None = None, cache_dir: str | None = None):
  """The offline SentencePiece tokenizer (vocab_path, or the one built by spec_cascade.data)."""
  try:
    from spec_cascade.data import vocab  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"The offline tasks need spec_cascade.data.vocab: {e}") from e
  path = vocab_path or vocab.get_vocab_path(cache_dir=cache_dir)
  return vocab.SentencePieceTokenizer(str(path))


def offline_source(examples: Sequence[Mapping[str, Any]], tokenizer: Tokenizer,
                   feature_lengths: Mapping[str, int], batch_size: int, *, seed: int = 0,
                   shuffle: bool = True, name: str = "data", **kwargs) -> OfflineBatches:
  """Tokenizes (logging truncations) and wraps the examples as OfflineBatches."""
  inputs, targets, _ = tokenize_examples(examples, tokenizer, feature_lengths, name)
  source = OfflineBatches(inputs, targets, batch_size, feature_lengths, seed=seed,
                          shuffle=shuffle, **kwargs)
  log.info("[%s] %d examples, %d batches per epoch, padding %.1f%% of token slots.", name,
           source.num_examples, source.batches_per_epoch, 100 * source.padding_fraction())
  return source


# ---------------------------------------------------------------------------
# seqio tasks (TensorFlow; imported lazily)

def get_seqio_task(name: str):
  """The registered seqio task or mixture, with a clear error naming the known ones."""
  import seqio  # pylint: disable=import-outside-toplevel
  try:
    import spec_cascade.data.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    log.warning("spec_cascade.data.tasks did not import (%s); only tasks registered "
                "elsewhere are available.", e)
  try:
    return seqio.get_mixture_or_task(name)
  except (ValueError, KeyError) as e:
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    raise ValueError(f"Unknown MIXTURE_OR_TASK_NAME {name!r}. Offline tasks: "
                     f"{list(OFFLINE_TASKS) + list(OFFLINE_MIXTURES)}; registered seqio "
                     f"tasks/mixtures: {known}.") from e


class SeqioBatches:
  """Batches of a seqio task/mixture through EncDecFeatureConverter (no packing:
  the model has no segment ids). Shapes are fixed at the feature lengths.
  Resuming skips `start_position` batches of the deterministic (seeded) stream.
  In a multi-process run each process reads its shard (batch_size / processes rows)."""

  def __init__(self, name: str, split: str, feature_lengths: Mapping[str, int],
               batch_size: int, *, seed: int = 0, shuffle: bool = True,
               shard_index: int = 0, num_shards: int = 1):
    self.task = get_seqio_task(name)
    self.name, self.split = name, split
    self.feature_lengths = check_feature_lengths(feature_lengths)
    if batch_size % num_shards:
      raise ValueError(f"BATCH_SIZE={batch_size} must be divisible by the number of "
                       f"processes ({num_shards}).")
    self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), shuffle
    self.shard_index, self.num_shards = shard_index, num_shards
    self.full_length_rows = 0

  def iterate(self, start_position: int = 0) -> Iterator[Batch]:
    import seqio  # pylint: disable=import-outside-toplevel
    ds = self.task.get_dataset(
        sequence_length=self.feature_lengths, split=self.split, shuffle=self.shuffle,
        seed=self.seed, num_epochs=None if self.shuffle else 1,
        shard_info=seqio.ShardInfo(self.shard_index, self.num_shards))
    ds = seqio.EncDecFeatureConverter(pack=False)(ds, self.feature_lengths)
    ds = ds.batch(self.batch_size // self.num_shards, drop_remainder=self.shuffle)
    if start_position:
      ds = ds.skip(start_position)
    for batch in ds.as_numpy_iterator():
      out = {k: np.asarray(batch[k]) for k in FEATURE_KEYS}
      out["decoder_loss_weights"] = out["decoder_loss_weights"].astype(np.float32)
      # seqio trims silently; rows ending exactly at the length may have been cut.
      full = int((out["decoder_target_tokens"][:, -1] != 0).sum() +
                 (out["encoder_input_tokens"][:, -1] != 0).sum())
      if full:
        self.full_length_rows += full
        log.debug("[%s] %d sequences reach the feature length (possibly truncated).",
                  self.name, full)
      rows = out["encoder_input_tokens"].shape[0]
      if rows < self.batch_size // self.num_shards:  # final eval batch: pad rows
        pad = self.batch_size // self.num_shards - rows
        out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in out.items()}
      yield out
