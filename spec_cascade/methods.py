"""The method catalogue: what every decoding method is, in one place (docs/methods.md).

Two tables, each row a frozen record:
- `METHODS`: the engine's methods, what `decoding.generate(method=...)` runs. A `Method` says
  which models the method uses, which deferral rules it takes, what its α is, whether the block
  size γ applies, how wide a block it commits, and which loop body of `decoding` runs it
  (`Method.body`, a key of `decoding.BODIES`: this module never imports decoding, which reads
  it, so the import graph keeps no circle).
- `TABLE`: the results table's method names (results.csv's `method` column, the sweeps'
  METHODS), each an engine method with a fixed rule, its display name and figure style; the
  row order is the report's. Beside them, an engine method with a `table_prefix` answers to
  <prefix><rule> for every rule of `deferral.RULES` (oracle_chow, spec_cascade_opt, ...);
  `lookup` parses such names without checking the rule (the rule registry needs JAX, which the
  report does not load), `infer.resolve_method` checks it.

"No γ" has one encoding here and in the engine: None (`Method.gamma`, `DecodeSpec`,
`GenerateOutput`, a sweep's `Point`). results.csv keeps writing 0 in its `num_draft_tokens`
column for such rows (`results.gamma_column`), as the reports of older sweeps expect.

Pure Python: no JAX, numpy or matplotlib.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

# α kinds: a deferral rule's lenience (the rule's α range applies), or BiLD's rollback
# threshold (−log p of a draft: any finite value).
ALPHA_RULE = "rule"
ALPHA_ROLLBACK = "bild"
# γ kinds: the drafts per block ('auto' may measure it), or BiLD's window bound (γ stands in for
# `bild_max_window` when a sweep leaves that unset; the engine itself never reads γ for BiLD).
GAMMA_BLOCK = "block"
GAMMA_WINDOW = "window"
# Every engine method with a table_prefix accepts any registered rule.
ANY_RULE = None


@dataclasses.dataclass(frozen=True)
class Method:
  """One engine method.

  name: `decoding.generate`'s method name. summary: one line for docs and error messages.
  uses_drafter / uses_verifier: the models it runs (the others may be None).
  body: the `decoding.BODIES` key of its loop body factory ('two_pass': `decoding.TWO_PASS`,
    two loops that `decode` runs itself).
  rules: the deferral rules it accepts: () none, a tuple of fixed ones, or ANY_RULE (every rule
    of `deferral.RULES`). default_rule: the rule it runs without one (None with ANY_RULE: a rule
    must be given). rule_error: the message (str.format with method, rule, want) for a rule
    outside a fixed `rules`.
  alpha: None, ALPHA_RULE or ALPHA_ROLLBACK. alpha_sweep: the finite [lo, hi] an 'auto' α grid
    covers where α is not a rule's (a rule's α: its `RuleSpec.sweep_range`).
  gamma: None (γ does not apply), GAMMA_BLOCK or GAMMA_WINDOW.
  width: spec → the widest block one loop iteration commits (sizes the caches and buffers).
  table_prefix: results-table names <prefix><rule> mean this method with that rule.
  analysis_only: both models run at every token, so it saves no verifier work (analysis only).
  lossless: outputs are the verifier's, so 'auto' γ may fall back to the verifier alone.
  sequential_calls: modelled latency charges it one sequential verifier call per deferral.
  """
  name: str
  summary: str
  uses_drafter: bool
  uses_verifier: bool
  body: str
  width: Callable[[Any], int]
  rules: tuple[str, ...] | None = ()
  default_rule: str | None = None
  rule_error: str = ""
  alpha: str | None = None
  alpha_sweep: tuple[float, float] | None = None
  gamma: str | None = None
  table_prefix: str | None = None
  analysis_only: bool = False
  lossless: bool = False
  sequential_calls: bool = False

  @property
  def single_model(self) -> bool:
    """Runs one model alone (the report's reference points)."""
    return self.uses_drafter != self.uses_verifier


_ONE_TOKEN = lambda spec: 1
_DRAFT_BLOCK = lambda spec: spec.num_draft_tokens + 1
_CHOW_ONLY = ("method {method!r} implements Chow's rule only (got {rule!r}); use "
              "method='oracle' or 'spec_cascade' for other rules.")
_FIXED_TARGET = ("method {method!r} always uses rule {want!r}; for other rules use "
                 "method='spec_cascade', rule={rule!r}.")

_ENGINE = (
    Method("drafter", "autoregressive decoding with the drafter alone", True, False,
           "one_model", _ONE_TOKEN),
    Method("verifier", "autoregressive decoding with the verifier alone", False, True,
           "one_model", _ONE_TOKEN),
    Method("token_cascade", "sequential token-level cascade: the verifier runs only where a row "
           "defers", True, True, "token_level",
           lambda spec: spec.token_cascade_window, rules=("chow",), default_rule="chow",
           rule_error=_CHOW_ONLY, alpha=ALPHA_RULE, sequential_calls=True),
    Method("oracle", "both models every token, any rule (analysis only)", True, True,
           "token_level", _ONE_TOKEN, rules=ANY_RULE, default_rule="diff", alpha=ALPHA_RULE,
           table_prefix="oracle_", analysis_only=True),
    Method("seq_cascade", "sequence-level Chow: rows the drafter is unsure of are decoded again "
           "by the verifier", True, True, "two_pass", _ONE_TOKEN, rules=("chow",),
           default_rule="chow", rule_error=_CHOW_ONLY, alpha=ALPHA_RULE),
    Method("spec_decode", "speculative decoding toward p̃ (rule `verifier`)", True, True,
           "draft_verify", _DRAFT_BLOCK, rules=("verifier",), default_rule="verifier",
           rule_error=_FIXED_TARGET, gamma=GAMMA_BLOCK, lossless=True),
    Method("spec_decode_lossy", "speculative decoding toward the `lossy` target", True, True,
           "draft_verify", _DRAFT_BLOCK, rules=("lossy",), default_rule="lossy",
           rule_error=_FIXED_TARGET, alpha=ALPHA_RULE, gamma=GAMMA_BLOCK),
    Method("spec_cascade", "speculative decoding toward any rule's target", True, True,
           "draft_verify", _DRAFT_BLOCK, rules=ANY_RULE, alpha=ALPHA_RULE, gamma=GAMMA_BLOCK,
           table_prefix="spec_cascade_"),
    Method("bild", "BiLD: greedy drafts while the drafter is confident, roll back where the "
           "verifier disagrees", True, True, "draft_rollback",
           lambda spec: spec.bild_max_window + 1,
           alpha=ALPHA_ROLLBACK, alpha_sweep=(0.0, 8.0), gamma=GAMMA_WINDOW),
)
METHODS: dict[str, Method] = {m.name: m for m in _ENGINE}
NAMES: tuple[str, ...] = tuple(METHODS)
BLOCK_METHODS: tuple[str, ...] = tuple(
    m.name for m in _ENGINE if m.gamma == GAMMA_BLOCK)


def get(name: str) -> Method:
  """The engine method `name`; ValueError naming the valid ones otherwise."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(NAMES)}.")
  return METHODS[name]


@dataclasses.dataclass(frozen=True)
class TableMethod:
  """A results-table method name: `method` (engine) run with `rule`.

  rule: the engine rule passed to `decoding.generate` (None: the method's default or none).
  display: the paper's name in tables and legends. alias: the engine name that means this row
  (`specdecode` answers to `spec_decode`). rule_column: results.csv's `rule` value where it is
  not `rule` (BiLD's lenience is its own). colour / marker: the figures' style (a colour key of
  `report_figures.TOL_MUTED`, a matplotlib marker); None for names outside `TABLE`.
  """
  name: str
  method: str
  rule: str | None = None
  display: str = ""
  alias: str | None = None
  rule_column: str | None = None
  colour: str | None = None
  marker: str | None = None

  @property
  def engine(self) -> Method:
    return METHODS[self.method]

  @property
  def column_rule(self) -> str:
    """results.csv's `rule` column for this method."""
    return self.rule_column if self.rule_column is not None else self.rule or ""

  @property
  def gamma_independent(self) -> bool:
    """Its rows do not depend on γ (written with γ 0 and read into every γ panel)."""
    return self.engine.gamma is None


TABLE: tuple[TableMethod, ...] = (
    TableMethod("drafter", "drafter", display="Drafter (small)"),
    TableMethod("verifier", "verifier", display="Verifier (large)"),
    TableMethod("seq_cascade", "seq_cascade", "chow", "SeqCascade [Chow]", colour="sand",
                marker="v"),
    TableMethod("token_cascade_chow", "token_cascade", "chow", "TokenCascade [Chow]",
                alias="token_cascade", colour="olive", marker="^"),
    TableMethod("oracle_diff", "oracle", "diff", "Oracle cascade [Diff]", alias="oracle",
                colour="purple", marker="h"),
    TableMethod("specdecode", "spec_decode", None, "SpecDecode", alias="spec_decode",
                colour="indigo", marker="o"),
    TableMethod("specdecode_lossy", "spec_decode_lossy", "lossy", "SpecDecode [Lossy]",
                alias="spec_decode_lossy", colour="cyan", marker="s"),
    TableMethod("bild", "bild", None, "BiLD", rule_column="bild", colour="teal", marker="D"),
    TableMethod("spec_cascade_bild_star", "spec_cascade", "bild_star", "SpecCascade [BiLD*]",
                colour="rose", marker="p"),
    TableMethod("spec_cascade_chow", "spec_cascade", "chow", "SpecCascade [Chow]",
                colour="green", marker="s"),
    TableMethod("spec_cascade_diff", "spec_cascade", "diff", "SpecCascade [Diff]",
                colour="purple", marker="^"),
    TableMethod("spec_cascade_opt", "spec_cascade", "opt", "SpecCascade [OPT]", colour="rose",
                marker="D"),
    TableMethod("spec_cascade_token_v1", "spec_cascade", "token_v1", "SpecCascade [Token v1]",
                colour="green", marker="P"),
    TableMethod("spec_cascade_token_v2", "spec_cascade", "token_v2", "SpecCascade [Token v2]",
                colour="purple", marker="X"),
    TableMethod("spec_cascade_token_v3", "spec_cascade", "token_v3", "SpecCascade [Token]",
                colour="wine", marker="o"),
)
TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in TABLE)
_BY_NAME = {t.name: t for t in TABLE}
_ALIASES = {t.alias: t for t in TABLE if t.alias}
PREFIXES: tuple[str, ...] = tuple(m.table_prefix for m in _ENGINE if m.table_prefix)
# The reference points of every panel (one model alone), in table order.
REFERENCE: tuple[str, ...] = tuple(t.name for t in TABLE if t.engine.single_model)

# The paper's main figure: these methods, plus the best of OTHER_SPEC_CASCADE per panel (ties
# go to the earlier name). Appendix panels: FAMILIES, in order; names no family holds follow.
MAIN_FIGURE: tuple[str, ...] = ("specdecode", "specdecode_lossy", "seq_cascade",
                                "token_cascade_chow", "bild", "spec_cascade_token_v3")
OTHER_SPEC_CASCADE: tuple[str, ...] = ("spec_cascade_chow", "spec_cascade_diff",
                                       "spec_cascade_opt", "spec_cascade_token_v1",
                                       "spec_cascade_token_v2", "spec_cascade_bild_star")
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Sequential cascades", ("seq_cascade", "token_cascade_chow", "oracle_diff")),
    ("SpecDecode, lossy SpecDecode, BiLD", ("specdecode", "specdecode_lossy", "bild",
                                            "spec_cascade_bild_star")),
    ("SpecCascade: confidence rules", ("spec_cascade_chow", "spec_cascade_diff",
                                       "spec_cascade_opt")),
    ("SpecCascade: token rules", ("spec_cascade_token_v1", "spec_cascade_token_v2",
                                  "spec_cascade_token_v3")),
)


def lookup(name: str) -> TableMethod | None:
  """The TableMethod of a results-table name, an engine alias or a <prefix><rule> name (the
  rule unchecked: see the module docstring); None for anything else."""
  if not isinstance(name, str):
    return None
  if name in _BY_NAME:
    return _BY_NAME[name]
  if name in _ALIASES:
    return _ALIASES[name]
  for m in _ENGINE:
    if m.table_prefix and name.startswith(m.table_prefix) and len(name) > len(m.table_prefix):
      rule = name[len(m.table_prefix):]
      return TableMethod(name, m.name, rule)
  return None


def display_name(name: str) -> str:
  """The paper's name of a results-table method (the name itself where it has none)."""
  t = _BY_NAME.get(name)
  return t.display if t is not None else name


def table_rule(name: str) -> str:
  """results.csv's `rule` column of a results-table method ('' where it has none)."""
  t = lookup(name)
  return t.column_rule if t is not None else ""


def gamma_independent(name: str) -> bool:
  """Whether rows of this results-table method never depend on γ (False if unknown)."""
  t = lookup(name)
  return t is not None and t.gamma_independent


def analysis_only(name: str) -> bool:
  """Whether a results-table method is analysis only (never a summary's winner)."""
  t = lookup(name)
  return t is not None and t.engine.analysis_only


def sort_key(name: str) -> tuple:
  """Sorts results-table names in the report's order, unknown ones after, by name."""
  if name in _BY_NAME:
    return (0, TABLE_NAMES.index(name), name)
  return (1, 0, name)


def families_text(sep: str = ", ") -> str:
  """'oracle_<rule>, spec_cascade_<rule>': the table names each rule forms (for messages)."""
  return sep.join(f"{p}<rule>" for p in PREFIXES)
