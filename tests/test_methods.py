"""The method catalogue (spec_cascade/methods.py) is complete, consistent and the only one."""
import ast
import math
import pathlib
import subprocess
import sys

import pytest

from spec_cascade import decoding, deferral, infer, methods, report_figures, results, sweep

PACKAGE = pathlib.Path(methods.__file__).parent
# Words that name a model role as well as a method: ("drafter", "verifier") loops over the pair
# are about models, not a second list of methods.
_MODEL_ROLES = {"drafter", "verifier"}


def test_every_method_has_a_body_and_every_body_a_method():
  bodies = {m.body for m in methods.METHODS.values()}
  assert bodies - {decoding.TWO_PASS} == set(decoding.BODIES)


def test_engine_rows_are_consistent():
  spec = decoding.make_spec("spec_cascade", "chow", num_draft_tokens=3)
  for m in methods.METHODS.values():
    assert m.summary and (m.uses_drafter or m.uses_verifier)
    if m.rules is methods.ANY_RULE:
      assert m.table_prefix and (m.default_rule is None or m.default_rule in deferral.RULES)
    elif m.rules:
      assert m.default_rule in m.rules and m.rule_error
      assert set(m.rules) <= set(deferral.RULES)
    else:
      assert m.default_rule is None and m.alpha != methods.ALPHA_RULE
    if m.default_rule is not None or m.rules == ():
      assert decoding.resolve_rule(m.name, None) == m.default_rule
    else:
      with pytest.raises(ValueError, match="needs a rule"):
        decoding.resolve_rule(m.name, None)
    assert (m.alpha == methods.ALPHA_ROLLBACK) == (m.alpha_sweep is not None)
    assert m.alpha in (None, methods.ALPHA_RULE, methods.ALPHA_ROLLBACK)
    assert m.gamma in (None, methods.GAMMA_BLOCK, methods.GAMMA_WINDOW)
    assert m.width(spec) >= 1
  assert decoding.METHODS == methods.NAMES


def test_every_table_name_resolves_to_its_row():
  assert len(set(methods.TABLE_NAMES)) == len(methods.TABLE_NAMES)
  displays = [t.display for t in methods.TABLE]
  assert all(displays) and len(set(displays)) == len(displays)
  covered = set()
  for t in methods.TABLE:
    covered.add(t.method)
    s = infer.resolve_method(t.name)
    assert (s.name, s.engine_method, s.engine_rule) == (t.name, t.method, t.rule)
    assert decoding.resolve_rule(t.method, t.rule) == (t.rule or t.engine.default_rule)
    assert results.default_rule(t.name) == t.column_rule
    if t.alias:
      assert t.alias in methods.METHODS and infer.resolve_method(t.alias).name == t.name
    if s.alpha_kind is not None:
      lo, hi = s.alpha_range()
      assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi
      s.validate_alpha(lo)
    assert methods.gamma_independent(t.name) == (not s.gamma_dependent)
  # Every engine method is reachable from the results table.
  assert covered == set(methods.NAMES)


def test_rule_families_resolve_for_every_rule():
  for m in methods.METHODS.values():
    if m.table_prefix:
      for rule in deferral.RULES:
        s = infer.resolve_method(m.table_prefix + rule)
        assert (s.engine_method, s.engine_rule, s.rule) == (m.name, rule, rule)
  with pytest.raises(ValueError, match="unknown method 'oracle_nope'"):
    infer.resolve_method("oracle_nope")
  assert methods.lookup("nope") is None and methods.lookup(3) is None


def test_figure_lists_and_styles_name_table_methods():
  names = set(methods.TABLE_NAMES)
  assert set(methods.MAIN_FIGURE) <= names and set(methods.OTHER_SPEC_CASCADE) <= names
  assert not set(methods.MAIN_FIGURE) & set(methods.OTHER_SPEC_CASCADE)
  for _, members in methods.FAMILIES:
    assert set(members) <= names
  for t in methods.TABLE:
    if t.engine.single_model:
      assert t.name in methods.REFERENCE
    else:
      assert t.colour in report_figures.TOL_MUTED and t.marker
  assert set(report_figures.STYLES) == names - set(methods.REFERENCE)
  markers = [(t.colour, t.marker) for t in methods.TABLE if t.colour]
  assert len(set(markers)) == len(markers)


def test_gamma_has_one_encoding():
  """None where γ does not apply, in the engine and a sweep's points; 0 in results.csv."""
  assert decoding.make_spec("verifier", num_draft_tokens=7).num_draft_tokens is None
  assert decoding.make_spec("bild", num_draft_tokens=7).num_draft_tokens is None
  assert decoding.make_spec("spec_decode", num_draft_tokens=7).num_draft_tokens == 7
  with pytest.raises(ValueError, match="num_draft_tokens must be an int"):
    decoding.make_spec("verifier", num_draft_tokens=0)
  pts = sweep.plan_points("t", infer.resolve_methods(["drafter", "specdecode"]), None, 2,
                          [1.0], [3])
  assert {p.method.name: p.num_draft_tokens for p in pts} == {"verifier": None, "drafter": None,
                                                             "specdecode": 3}
  assert results.make_key("t", "drafter", None, 1.0, None)[-1] == 0
  assert results.point_name("drafter", None, 1.0, None) == "drafter__T1__g0"


def test_catalogue_loads_without_jax():
  code = ("import sys; import spec_cascade.methods; "
          "assert 'jax' not in sys.modules and 'numpy' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def _method_name_collections(tree: ast.AST, names: set[str]):
  """(line, names) of each literal tuple / list / set / dict-keys naming ≥ 2 methods, of which
  at least one is not a model role."""
  for node in ast.walk(tree):
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
      elts = node.elts
    elif isinstance(node, ast.Dict):
      elts = [k for k in node.keys if k is not None]
    else:
      continue
    found = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in names}
    if len(found) >= 2 and found - _MODEL_ROLES:
      yield node.lineno, sorted(found)


def test_no_other_module_lists_methods():
  names = set(methods.NAMES) | set(methods.TABLE_NAMES)
  names |= {t.alias for t in methods.TABLE if t.alias}
  # The checker finds what it must: the catalogue itself lists methods.
  catalogue = ast.parse((PACKAGE / "methods.py").read_text())
  assert list(_method_name_collections(catalogue, names))
  offenders = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    if path.name == "methods.py" and path.parent == PACKAGE:
      continue
    hits = list(_method_name_collections(ast.parse(path.read_text()), names))
    if hits:
      offenders[str(path.relative_to(PACKAGE.parent))] = hits
  assert not offenders, ("method names listed outside spec_cascade/methods.py (add a field to "
                         f"the catalogue instead): {offenders}")
