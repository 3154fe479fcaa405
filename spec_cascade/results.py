"""Results table of a sweep: one row per (task, method, α, temperature T, block size γ).

The sweep appends rows as operating points finish; `report.py` turns the table into the paper's
tables and plots. The file is a plain CSV (one header line, one line per row) so it can be read by
anything, written atomically (temp file + `os.replace`) so a crash never leaves a half-written table,
and keyed by (task, method, α, T, γ) so a resumed sweep skips the points it already has
(`done_keys`).

Conventions (docs/method.md §7):
- `alpha` is NaN for methods without a lenience (drafter, verifier, specdecode).
- `num_draft_tokens` (γ) is 0 for methods that draft nothing (drafter, verifier, the sequential
  cascades); such rows are γ-independent and appear in the report for every γ.
- `rel_latency` = method wall-clock / verifier-alone wall-clock at the same task and T.
- `modelled_rel_latency` = (drafter_steps · c + verifier_calls) / verifier-alone steps.
- `latency_s` = mean seconds per example decoded alone (batch 1: the paper's latency regime, on
  the sweep's first `latency_examples` examples); `rel_latency_batch1` = that over the
  verifier-alone's at the same task and T. NaN when the sweep did not measure it.
- Columns this module does not know are kept verbatim in `ResultRow.extra` and written back, so a
  newer sweep can add columns without an older reader dropping them.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import tempfile
from typing import Any, Iterable, Mapping, Sequence

from spec_cascade import methods as methods_lib

RESULTS_FILENAME = "results.csv"


def default_rule(method: str) -> str:
  """The `rule` column of a results-table method ('' for drafter/verifier/specdecode):
  the catalogue's (`methods.table_rule`; `spec_cascade_<rule>` → `<rule>`)."""
  return methods_lib.table_rule(method)


def gamma_column(num_draft_tokens: int | None) -> int:
  """The `num_draft_tokens` column of a point's γ: None (γ does not apply) is written as 0,
  the encoding results.csv has always used for such rows."""
  return 0 if num_draft_tokens is None else int(num_draft_tokens)


@dataclasses.dataclass(frozen=True)
class ResultRow:
  """One operating point of a sweep (means over `trials` timed repetitions)."""
  task: str
  method: str
  rule: str = ""
  alpha: float = math.nan
  temperature: float = 1.0
  num_draft_tokens: int = 0
  quality: float = math.nan
  quality_std: float = math.nan
  metric: str = ""
  wallclock_s: float = math.nan
  wallclock_std_s: float = math.nan
  rel_latency: float = math.nan
  modelled_rel_latency: float = math.nan
  latency_s: float = math.nan
  rel_latency_batch1: float = math.nan
  acceptance_rate: float = math.nan
  rejection_rate: float = math.nan
  deferral_rate: float = math.nan
  tokens_per_verifier_call: float = math.nan
  num_examples: int = 0
  trials: int = 0
  cost_ratio_c: float = math.nan
  extra: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.task or not self.method:
      raise ValueError(
          f"ResultRow needs a non-empty task and method, got task={self.task!r}, "
          f"method={self.method!r}.")
    if not (self.temperature >= 0):
      raise ValueError(f"temperature must be >= 0, got {self.temperature!r} "
                       f"(task={self.task}, method={self.method}).")
    for name in ("num_draft_tokens", "num_examples", "trials"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r} "
                         f"(task={self.task}, method={self.method}).")

  @property
  def key(self) -> tuple:
    return row_key(self)


# Column order of the CSV file (the `extra` columns follow, sorted).
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ResultRow) if f.name != "extra")
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(ResultRow)}
_INT_COLUMNS = frozenset(n for n, t in _FIELD_TYPES.items() if t == "int")
_FLOAT_COLUMNS = frozenset(n for n, t in _FIELD_TYPES.items() if t == "float")
_REQUIRED_COLUMNS = ("task", "method")


def _norm_float(x: Any) -> float | None:
  """Key form of a float: rounded so 0.1+0.2 and 0.3 agree; NaN/None → None; −0.0 → 0.0."""
  if x is None:
    return None
  x = float(x)
  if math.isnan(x):
    return None
  return round(x, 9) + 0.0


def row_key(row: ResultRow) -> tuple:
  """(task, method, α, T, γ): the identity of an operating point in a sweep."""
  return (row.task, row.method, _norm_float(row.alpha), _norm_float(row.temperature),
          int(row.num_draft_tokens))


def make_key(task: str, method: str, alpha: float | None, temperature: float,
             num_draft_tokens: int | None) -> tuple:
  """The key `done_keys` would return for a point, built before the point is run."""
  return (task, method, _norm_float(alpha), _norm_float(temperature),
          gamma_column(num_draft_tokens))


def point_name(method: str, alpha: float | None, temperature: float,
               num_draft_tokens: int | None) -> str:
  """The file-name-safe name of a point's predictions / metrics files, e.g.
  spec_cascade_chow__T1__g5__a0.25 (no α part for methods without α; g0 without γ)."""
  a = "" if alpha is None or math.isnan(alpha) else f"__a{alpha:.6g}"
  return f"{method}__T{temperature:g}__g{gamma_column(num_draft_tokens)}{a}"


def row_point_name(row: ResultRow) -> str:
  """`point_name` of a results row: where the sweep wrote its per-point files."""
  return point_name(row.method, row.alpha, row.temperature, row.num_draft_tokens)


def _format_cell(value: Any) -> str:
  if isinstance(value, bool):
    return str(int(value))
  if isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    # repr round-trips exactly; NaN is written as an empty cell (readable in spreadsheets).
    return "" if math.isnan(value) else repr(value)
  return str(value)


def _parse_cell(name: str, text: str, line: int) -> Any:
  try:
    if name in _FLOAT_COLUMNS:
      return math.nan if text.strip() == "" else float(text)
    if name in _INT_COLUMNS:
      return 0 if text.strip() == "" else int(float(text))
  except ValueError:
    raise ValueError(f"line {line}: column {name!r} holds {text!r}, which is not a number.") from None
  return text


def rows_to_csv(rows: Iterable[ResultRow]) -> str:
  """CSV text with the known columns first, then every `extra` column (sorted)."""
  rows = list(rows)
  extra_cols = sorted({k for r in rows for k in r.extra} - set(COLUMNS))
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(COLUMNS + tuple(extra_cols))
  for r in rows:
    writer.writerow([_format_cell(getattr(r, c)) for c in COLUMNS]
                    + [str(r.extra.get(c, "")) for c in extra_cols])
  return buf.getvalue()


def rows_from_csv(text: str) -> list[ResultRow]:
  reader = csv.reader(io.StringIO(text))
  try:
    header = next(reader)
  except StopIteration:
    return []
  missing = [c for c in _REQUIRED_COLUMNS if c not in header]
  if missing:
    raise ValueError(f"results table lacks the required column(s) {missing}; header is {header}.")
  rows = []
  for line, cells in enumerate(reader, start=2):
    if not cells:
      continue
    if len(cells) != len(header):
      raise ValueError(f"line {line}: {len(cells)} cells but the header has {len(header)} "
                       "columns; the file is damaged.")
    known, extra = {}, {}
    for name, text in zip(header, cells):
      if name in _FIELD_TYPES and name != "extra":
        known[name] = _parse_cell(name, text, line)
      else:
        extra[name] = text
    rows.append(ResultRow(**known, extra=extra))
  return rows


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` via a temp file in the same folder and `os.replace`.

  Readers see either the old file or the complete new one, never a partial write; on any exception
  the temp file is removed and `path` is untouched.
  """
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise


def write_rows(path: str | os.PathLike, rows: Iterable[ResultRow]) -> None:
  """Writes the whole table atomically (replacing any existing file)."""
  atomic_write_text(path, rows_to_csv(rows))


def read_rows(path: str | os.PathLike) -> list[ResultRow]:
  """Reads a results table; a missing file raises FileNotFoundError naming the path."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no results table at {path}; run the sweep first "
                            "(python -m spec_cascade.sweep ...).")
  with open(path, encoding="utf-8", newline="") as f:
    try:
      return rows_from_csv(f.read())
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from None


def merge_rows(path: str | os.PathLike, new_rows: Iterable[ResultRow]) -> list[ResultRow]:
  """Adds `new_rows` to the table at `path` (created if missing) and returns the merged table.

  A new row replaces an existing row with the same key (task, method, α, T, γ) in place; other
  new rows are appended in the given order. The file is rewritten atomically.
  """
  existing = read_rows(path) if os.path.exists(path) else []
  index = {row_key(r): i for i, r in enumerate(existing)}
  merged = list(existing)
  for r in new_rows:
    k = row_key(r)
    if k in index:
      merged[index[k]] = r
    else:
      index[k] = len(merged)
      merged.append(r)
  write_rows(path, merged)
  return merged


def done_keys(path: str | os.PathLike) -> set[tuple]:
  """Keys of the points already in the table at `path` (empty if there is no table yet)."""
  if not os.path.exists(path):
    return set()
  return {row_key(r) for r in read_rows(path)}


def fill_rel_latency(rows: Sequence[ResultRow]) -> list[ResultRow]:
  """Fills a NaN `rel_latency` from the verifier-alone row at the same (task, T).

  Rows whose `rel_latency` is already set are left alone; a (task, T) with no verifier row, or
  with several verifier rows of different wall-clock, leaves NaN (the ratio would be ambiguous).
  """
  verifier_time: dict[tuple, set[float]] = {}
  for r in rows:
    if r.method == "verifier" and not math.isnan(r.wallclock_s):
      verifier_time.setdefault((r.task, _norm_float(r.temperature)), set()).add(r.wallclock_s)
  out = []
  for r in rows:
    times = verifier_time.get((r.task, _norm_float(r.temperature)), set())
    if math.isnan(r.rel_latency) and len(times) == 1 and not math.isnan(r.wallclock_s):
      (t,) = times
      if t > 0:
        r = dataclasses.replace(r, rel_latency=r.wallclock_s / t)
    out.append(r)
  return out
