"""Paper-style report of a sweep: `python -m spec_cascade.report RUN_DIR [--test_dir DIR]`.

Reads RUN_DIR/results.csv (and, for confidence intervals, each point's per-example statistics in
metrics/ or predictions/) and writes RUN_DIR/report.md, a self-contained RUN_DIR/report.html and
the figures. The report opens with a five-line summary (per task × T: which method is fastest at
the verifier's quality, by how much, with its interval), then the tables, then the figures.

- Panels: rows grouped by (task, T, γ), each with its verifier reference and readings
  (`report_panels`).
- Curves and the paper's two numbers per method — (a) the latency reduction at the verifier's
  quality, (b) the best quality within the verifier's latency — are read on each method's frontier
  over α (`report_curves`).
- Every number read off a curve comes with a bootstrap interval over examples, paired across the
  methods of a task, and wall-clock latency with its spread over trials (`report_stats`). A cell is
  marked '≈' where its difference to the verifier (latency in (a), quality in (b)) is within that
  noise.
- Figures (`report_figures`): per (task, T, γ) and per x axis (batch-1, wall-clock and modelled
  latency, deferral rate, verifier calls per token) a main figure with the paper's main-figure
  methods and an appendix figure with every method as small multiples.
- With `--test_dir` (a second sweep of the same grid on a held-out split, e.g. `calibrate`'s
  OUTPUT_DIR/test), a table of the α each method would be given on this sweep's split to reach the
  verifier's quality (`budget.choose`) and what that α gives on the held-out split.

Importing this module loads neither matplotlib, TensorFlow nor JAX.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Sequence

import numpy as np

from spec_cascade import budget as budget_lib
from spec_cascade import gin_cli
from spec_cascade import methods as methods_lib
from spec_cascade import report_doc as doc
from spec_cascade import report_figures as figures
from spec_cascade import report_stats as stats
from spec_cascade import results as results_lib
# The curve-reading API has always been reachable as report.<name>.
from spec_cascade.report_curves import (FRONTIERS, LATENCY_KINDS,  # pylint: disable=unused-import
                                        axis_value, best_quality_within, by_alpha, curve_of,
                                        display_name, frontier, frontier_indices,
                                        latency_at_quality, method_sort_key, metric_name,
                                        METHOD_ORDER,
                                        verifier_calls_per_token, REFERENCE_METHODS)
from spec_cascade.results import ResultRow
from spec_cascade.report_panels import (fmt, fmt_interval, group_rows, has_axis,
                                        headline_latency, main_methods, panel_metric,
                                        panel_readings, panel_slug, panel_title,
                                        reference_reading, verifier_row)

_LATENCY_LABELS = {"batch1": "batch-1", "wallclock": "wall-clock", "modelled": "modelled"}
# Files are named after the axis: quality_vs_<name>__<task>_T<t>_g<γ>.png.
_AXIS_FILE = {"batch1": "batch1_latency", "wallclock": "latency", "modelled": "modelled_latency",
              "deferral": "deferral", "verifier_calls": "verifier_calls"}
SUMMARY_LINES = 5


# ----------------------------------------------------------------------------------------------
# Tables.


def _reading_cell(value: float | None, text: str, diff_reps: np.ndarray, shown_reps: np.ndarray,
                  has_interval: bool, level: float, spec: str) -> str:
  """A table cell: the value (`text`), its interval (of `shown_reps`) and '≈' where the
  difference to the verifier (`diff_reps`) is within noise; '—' for a value never reached."""
  if value is None:
    return "—"
  if not has_interval:
    return text
  near = "≈ " if stats.within_noise(diff_reps, level) else ""
  return f"{near}{text} {fmt_interval(shown_reps, level, spec)}"


def paper_table_blocks(rows: Sequence[ResultRow], latency: str = "wallclock",
                       mode: str = "pareto", reps: stats.Replicates | None = None
                       ) -> list[doc.Block]:
  """The paper's table per (task, T, γ) as report blocks (see `paper_table`)."""
  if latency not in LATENCY_KINDS:
    raise ValueError(f"latency must be one of {LATENCY_KINDS}, got {latency!r}.")
  rows = list(rows)
  if not rows:
    raise ValueError("paper_table got no rows; the results table is empty.")
  kind = _LATENCY_LABELS[latency]
  out: list[doc.Block] = []
  level = reps.level if reps else stats.LEVEL
  for key, methods in group_rows(rows):
    metric = metric_name(panel_metric(methods))
    out.append(doc.Heading(3, f"{panel_title(key)} ({kind} latency)"))
    refs = []
    for label, name in (("Drafter", "drafter"), ("Verifier", "verifier")):
      ref = reference_reading(methods, name, latency)
      if ref is not None:
        refs.append(f"{label} {metric}: {fmt(ref[0])} (rel. latency {fmt(ref[1])})")
    if refs:
      out.append(doc.Para(" · ".join(refs)))
    ver = verifier_row(methods)
    if ver is None:
      out.append(doc.Para("_No verifier row with a quality in this panel: the paper's columns "
                          "are relative to the verifier, so they cannot be computed. Add the "
                          "`verifier` method to the sweep._"))
      continue
    ci = f", {100 * level:.0f} % CI" if reps is not None and reps.has_quality(ver) else ""
    header = ("Method", "Rule", "α points",
              f"Latency reduction at verifier {metric} (↑){ci}",
              f"Best {metric} within verifier latency (↑){ci}")
    body = []
    for m, rd in panel_readings(methods, latency, reps, mode).items():
      rs = methods[m]
      rule = rs[0].rule or results_lib.default_rule(m)
      red = _reading_cell(rd.reduction, f"{rd.reduction:.1f}%" if rd.reduction is not None
                          else "", rd.reduction_reps, rd.reduction_reps, rd.has_interval,
                          level, ".1f")
      best = _reading_cell(rd.best_quality, fmt(rd.best_quality), rd.best_gain_reps,
                           rd.best_gain_reps + ver.quality, rd.has_interval, level, ".2f")
      body.append((display_name(m), rule, str(len(rs)), red, best))
    out.append(doc.Table(header, tuple(body), "llrrr"))
  return out


def paper_table(rows: Sequence[ResultRow], latency: str = "wallclock", mode: str = "pareto",
                reps: stats.Replicates | None = None) -> str:
  """Markdown tables in the paper's form, one per (task, T, γ).

  Per method: (a) latency reduction 1 − rel_latency when matching the verifier's quality (negative
  when the method is slower than the verifier there; "—" if never matched); (b) best quality within
  the verifier's latency ("—" if no operating point is that fast). With `reps`, each cell carries
  its bootstrap interval ('n.r.': beyond that bound the curve never reaches the verifier's quality /
  has no point within its latency) and '≈' where the difference to the verifier is within it.
  """
  return doc.to_markdown(paper_table_blocks(rows, latency, mode, reps))


def points_table_blocks(rows: Sequence[ResultRow], reps: stats.Replicates | None = None
                        ) -> list[doc.Block]:
  """Every operating point per panel, with the quality interval and the wall-clock spread."""
  out: list[doc.Block] = []
  level = reps.level if reps else stats.LEVEL
  for key, methods in group_rows(rows):
    out.append(doc.Heading(4, panel_title(key)))
    body = []
    for m, rs in methods.items():
      for r in by_alpha(rs):
        q = fmt(r.quality)
        if reps is not None and reps.has_quality(r):
          q += " " + fmt_interval(reps.of_quality(r), level, ".2f")
        wall = fmt(r.rel_latency, ".3f")
        if r.trials > 1 and math.isfinite(r.wallclock_std_s) and r.wallclock_s > 0:
          wall += f" ± {r.rel_latency * r.wallclock_std_s / r.wallclock_s:.3f}"
        body.append((display_name(m), fmt(r.alpha, ".3g"), q, fmt(r.rel_latency_batch1, ".3f"),
                     wall, fmt(r.modelled_rel_latency, ".3f"), fmt(r.acceptance_rate, ".3f"),
                     fmt(r.deferral_rate, ".3f"), fmt(verifier_calls_per_token(r), ".3f"),
                     str(r.trials)))
    out.append(doc.Table(
        ("Method", "α", f"quality [{100 * level:.0f} % CI]", "rel. latency (batch 1)",
         "rel. latency (batches) ± s.d.", "modelled", "accept", "defer", "verifier calls / token",
         "trials"), tuple(body)))
  return out


def points_table(rows: Sequence[ResultRow], reps: stats.Replicates | None = None) -> str:
  """Every operating point, per panel (for the report's appendix), as Markdown."""
  return doc.to_markdown(points_table_blocks(rows, reps))


def alpha_transfer_blocks(dev_rows: Sequence[ResultRow], test_rows: Sequence[ResultRow],
                          latency: str, test_reps: stats.Replicates | None = None
                          ) -> list[doc.Block]:
  """"α chosen on validation → test": per panel and method with α, the cheapest α whose quality
  reaches the verifier's on the dev sweep (`budget.choose`, cost = `latency`), and that α's
  latency and quality (with interval) on the test sweep."""
  # The choice reads measured points only, never an interpolated frontier: an α has to exist.
  tests = dict(group_rows(test_rows))
  out: list[doc.Block] = []
  level = test_reps.level if test_reps else stats.LEVEL
  for key, methods in group_rows(dev_rows):
    ver, t_methods = verifier_row(methods), tests.get(key, {})
    t_ver = verifier_row(t_methods)
    if ver is None or t_ver is None:
      continue
    metric = metric_name(panel_metric(methods))
    body = []
    for m, rs in methods.items():
      pts = [(r.alpha, axis_value(r, latency), r.quality) for r in rs if math.isfinite(r.alpha)]
      if m in REFERENCE_METHODS or not pts:
        continue
      try:
        choice = budget_lib.choose(pts, "verifier_quality", 0.0, ver.quality)
      except ValueError:
        continue
      test = next((r for r in t_methods.get(m, []) if math.isfinite(r.alpha)
                   and abs(r.alpha - choice.alpha) < 1e-9), None)
      dev_cells = (display_name(m), f"{choice.alpha:.3g}", fmt(choice.cost, ".3f"),
                   f"{choice.quality:.2f}", "yes" if choice.met else "no (closest α)")
      if test is None:
        body.append(dev_cells + ("not in the test sweep", "—", "—"))
        continue
      q = fmt(test.quality)
      verdict = "yes" if test.quality >= t_ver.quality else "no"
      if test_reps is not None and test_reps.has_quality(test) and test_reps.has_quality(t_ver):
        q += " " + fmt_interval(test_reps.of_quality(test), level, ".2f")
        gap = test_reps.of_quality(test) - test_reps.of_quality(t_ver)
        if stats.within_noise(gap, level):
          verdict = "≈"
      body.append(dev_cells + (fmt(axis_value(test, latency), ".3f"), q, verdict))
    if body:
      out.append(doc.Heading(3, f"{panel_title(key)} ({_LATENCY_LABELS[latency]} latency)"))
      out.append(doc.Para(f"Verifier {metric}: {ver.quality:.2f} on the sweep's split, "
                          f"{t_ver.quality:.2f} on the test sweep's."))
      out.append(doc.Table(
          ("Method", "α (chosen)", "latency (dev)", f"{metric} (dev)", "reaches verifier (dev)",
           "latency (test)", f"{metric} (test) [{100 * level:.0f} % CI]",
           "reaches verifier (test)"), tuple(body), "lrrrlrrl"))
  return out


# ----------------------------------------------------------------------------------------------
# The summary.


def _summary_line(key: tuple, methods: dict[str, list[ResultRow]],
                  reps: stats.Replicates | None, mode: str) -> str:
  latency = headline_latency(methods)
  ver = verifier_row(methods)
  title = f"**{panel_title(key)}** ({_LATENCY_LABELS[latency]} latency)"
  if ver is None:
    return f"{title}: no verifier row, so nothing to compare against."
  metric = metric_name(ver.metric)
  level = reps.level if reps else stats.LEVEL
  readings = {m: rd for m, rd in panel_readings(methods, latency, reps, mode).items()
              if not methods_lib.analysis_only(m)}
  ranked = sorted((m for m in readings if readings[m].reduction is not None),
                  key=lambda m: -readings[m].reduction)
  if not ranked:
    return (f"{title}: no method reaches the verifier's {metric} ({ver.quality:.2f}) on its "
            "frontier.")
  win = ranked[0]
  rd = readings[win]
  ci = f" {fmt_interval(rd.reduction_reps, level, '.1f')}" if rd.has_interval else ""
  noise = rd.has_interval and stats.within_noise(rd.reduction_reps, level)
  if rd.reduction > 0:
    line = (f"{title}: {display_name(win)} matches the verifier's {metric} ({ver.quality:.2f}) "
            f"at {rd.reduction:.1f}% lower latency{ci}")
  else:
    line = (f"{title}: no method matches the verifier's {metric} ({ver.quality:.2f}) at lower "
            f"latency; closest {display_name(win)}, {-rd.reduction:.1f}% slower (reduction{ci})")
  line += ", ≈ the verifier's latency within noise" if noise else ""
  if len(ranked) > 1:
    second = readings[ranked[1]]
    line += f"; next {display_name(ranked[1])} {second.reduction:.1f}%"
    if rd.has_interval and second.has_interval:
      diff = stats.difference(rd.reduction_reps, second.reduction_reps)
      line += (f" (paired difference {rd.reduction - second.reduction:.1f} points "
               f"{fmt_interval(diff, level, '.1f', '−∞')}"
               f"{', ≈ a tie' if stats.within_noise(diff, level) else ''})")
  return line + "."


def summary_lines(rows: Sequence[ResultRow], reps: stats.Replicates | None = None,
                  mode: str = "pareto") -> list[str]:
  """At most `SUMMARY_LINES` lines: what is compared, then one line per (task, T, γ) panel —
  which method is fastest at the verifier's quality, by how much, with its interval, and how far
  ahead of the next one (paired interval)."""
  panels = group_rows(rows)
  level = reps.level if reps else stats.LEVEL
  with_ci = reps is not None and bool(reps.quality)
  lines = [f"Fastest method at the verifier's quality per task × T (latency reduction relative to "
           f"the verifier alone"
           + (f"; [{100 * level:.0f} % bootstrap interval over examples, paired across methods]"
              if with_ci else "; no per-example scores, so no intervals") + "):"]
  room = SUMMARY_LINES - 1
  shown = panels if len(panels) <= room else panels[:room - 1]
  lines += [_summary_line(key, methods, reps, mode) for key, methods in shown]
  if len(shown) < len(panels):
    lines.append(f"… and {len(panels) - len(shown)} more task × T × γ panels in the tables below.")
  return lines


# ----------------------------------------------------------------------------------------------
# Figures and the report.


def write_figures(rows: Sequence[ResultRow], run_dir: str, reps: stats.Replicates | None,
                  mode: str = "pareto") -> list[tuple[tuple, str, str, str]]:
  """Writes every panel's main and appendix figure for each axis it has data on.

  Returns (panel key, "main" / "appendix", axis, PNG path relative to run_dir) per figure; main
  figures are also written as SVG.
  """
  out = []
  for key, methods in group_rows(rows):
    metric = panel_metric(methods)
    names = main_methods(methods, reps, mode)
    title = panel_title(key)
    for axis in figures.AXIS_LABELS:
      if not has_axis(methods, axis):
        continue
      name = f"quality_vs_{_AXIS_FILE[axis]}__{panel_slug(key)}"
      fig = figures.main_figure(title, methods, names, axis, metric, reps, mode)
      figures.save_figure(fig, os.path.join(run_dir, name), ("png", "svg"))
      out.append((key, "main", axis, name + ".png"))
      if figures.families(list(methods)):
        fig = figures.appendix_figure(title, methods, axis, metric, reps, mode)
        figures.save_figure(fig, os.path.join(run_dir, "appendix_" + name))
        out.append((key, "appendix", axis, "appendix_" + name + ".png"))
  return out


def _split_of(run_dir: str) -> str:
  try:
    with open(os.path.join(run_dir, "settings.json"), encoding="utf-8") as f:
      return str(json.load(f).get("split") or "?")
  except (OSError, ValueError, AttributeError):
    return "?"


def report_blocks(rows: Sequence[ResultRow], run_dir: str, reps: stats.Replicates | None,
                  figure_list, mode: str = "pareto", test_rows=None,
                  test_reps: stats.Replicates | None = None, test_dir: str | None = None
                  ) -> list[doc.Block]:
  """The report's content: summary, tables, figures, appendix."""
  rows = list(rows)
  tasks = sorted({r.task for r in rows})
  reading = "Pareto" if mode == "pareto" else "convex-hull"
  lines = summary_lines(rows, reps, mode)
  blocks: list[doc.Block] = [doc.Heading(1, "Speculative cascades: results"),
                             doc.Para(lines[0]), doc.Bullets(tuple(lines[1:]))]
  missing = sum(1 for r in rows if reps is not None and not reps.has_quality(r))
  blocks.append(doc.Para(
      f"Source: `{results_lib.RESULTS_FILENAME}` ({len(rows)} operating points; tasks: "
      f"{', '.join(tasks)}; split: {_split_of(run_dir)})."
      + (f" {missing} points have no per-example scores and so no interval." if missing else "")))
  blocks.append(doc.Heading(2, "Tables"))
  blocks.append(doc.Para(
      "Columns: (a) latency reduction 1 − rel. latency at which the method first matches the "
      "verifier's quality; (b) the best quality reachable within the verifier's latency. Curves "
      f"are read on their {reading} frontier over α with linear interpolation between adjacent "
      "points (`spec_cascade/report_curves.py`). '—': never reached / no point within budget. "
      "Brackets: bootstrap interval over examples (and over trials for wall-clock); 'n.r.': at "
      "that end of the interval the curve never reaches the verifier's quality. '≈': the "
      "difference to the verifier — latency in (a), quality in (b) — is within that interval."))
  batch1 = any(math.isfinite(r.rel_latency_batch1) for r in rows)
  sections = []
  if batch1:
    n = sorted({r.extra.get("latency_examples", "") for r in rows} - {"", "0"})
    sections.append(("batch1", "Latency: one example at a time (batch 1, the paper's regime)",
                     f"Mean seconds per example, each decoded alone, relative to the verifier "
                     f"alone (on the first {', '.join(n) or '?'} examples of each task)."))
  sections += [("wallclock", "Throughput: wall-clock over the sweep's batches",
                "Relative to the verifier alone on the same batches."),
               ("modelled", "Modelled latency",
                "(drafter steps · c + verifier calls) / the verifier alone's calls.")]
  for kind, heading, text in sections:
    blocks += [doc.Heading(2, heading), doc.Para(text)]
    blocks += paper_table_blocks(rows, kind, mode, reps)
  blocks.append(doc.Heading(2, "α chosen on validation → test"))
  if test_rows:
    latency = "batch1" if batch1 else "modelled"
    transfer = alpha_transfer_blocks(rows, test_rows, latency, test_reps)
    blocks.append(doc.Para(
        f"Per method, the cheapest α ({_LATENCY_LABELS[latency]} latency) whose quality reaches "
        f"the verifier's on this sweep (split {_split_of(run_dir)}), then that α on the sweep in "
        f"`{test_dir}` (split {_split_of(test_dir or '')})."))
    blocks += transfer or [doc.Para("_The test sweep shares no (task, T, γ) panel with this "
                                    "one._")]
  else:
    blocks.append(doc.Para(
        "_Needs a second sweep of the same grid on a held-out split: run the sweep again with "
        "`SPLIT='test'` (or use `spec_cascade.calibrate`'s OUTPUT_DIR/dev and /test) and pass "
        "`--test_dir`._"))
  blocks.append(doc.Heading(2, "Figures"))
  caption = {"main": "the paper's main-figure methods", "appendix": "all methods by family"}
  appendix: list[doc.Block] = []
  for key, methods in group_rows(rows):
    mine = [f for f in figure_list if f[0] == key]
    if not mine:
      continue
    blocks.append(doc.Heading(3, panel_title(key)))
    best = [m for m in main_methods(methods, reps, mode) if m in figures.OTHER_SPEC_CASCADE]
    if best:
      blocks.append(doc.Para(
          f"Besides SpecCascade [Token], the main figures draw {display_name(best[0])}: the other "
          f"SpecCascade rule with the largest latency reduction at the verifier's quality "
          f"({_LATENCY_LABELS[headline_latency(methods)]} latency)."))
    for _, kind, axis, path in mine:
      alt = f"{panel_title(key)}: quality vs {figures.AXIS_TITLES[axis]}, {caption[kind]}"
      (blocks if kind == "main" else appendix).append(doc.Image(path, alt))
  blocks.append(doc.Heading(2, "Appendix"))
  blocks.append(doc.Details("All methods, one panel per family", tuple(appendix)))
  blocks.append(doc.Details("All operating points", tuple(points_table_blocks(rows, reps))))
  return blocks


def _replicates_for(run_dir: str, rows: Sequence[ResultRow], reps: int) -> stats.Replicates:
  return stats.replicates(rows, lambda r: stats.load_example_stats(run_dir, r), reps)


def write_report(run_dir: str, mode: str = "pareto", test_dir: str | None = None,
                 reps: int = stats.REPS) -> str:
  """Reads `run_dir/results.csv`; writes report.md, report.html and the figures into run_dir;
  returns the Markdown. `test_dir`: a held-out sweep for the α-transfer table."""
  path = os.path.join(run_dir, results_lib.RESULTS_FILENAME)
  rows = results_lib.read_rows(path)
  if not rows:
    raise ValueError(f"{path} has no rows; nothing to report.")
  if mode not in FRONTIERS:
    raise ValueError(f"frontier mode must be one of {FRONTIERS}, got {mode!r}.")
  replic = _replicates_for(run_dir, rows, reps)
  test_rows = test_reps = None
  if test_dir:
    test_rows = results_lib.read_rows(os.path.join(test_dir, results_lib.RESULTS_FILENAME))
    test_reps = _replicates_for(test_dir, test_rows, reps)
  figure_list = write_figures(rows, run_dir, replic, mode)
  blocks = report_blocks(rows, run_dir, replic, figure_list, mode, test_rows, test_reps, test_dir)
  text = doc.to_markdown(blocks)
  results_lib.atomic_write_text(os.path.join(run_dir, "report.md"), text)
  results_lib.atomic_write_text(os.path.join(run_dir, "report.html"),
                                doc.to_html(blocks, run_dir, "Speculative cascades: results"))
  return text


@gin_cli.cli_main
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m spec_cascade.report RUN_DIR` (module docstring); returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="python -m spec_cascade.report",
      description="Writes RUN_DIR/report.md, report.html and figures from RUN_DIR/results.csv.")
  parser.add_argument("run_dir", help="a sweep's output folder (holds results.csv)")
  parser.add_argument("--frontier", choices=FRONTIERS, default="pareto",
                      help="how curves are read (see spec_cascade/report_curves.py)")
  parser.add_argument("--test_dir", default=None,
                      help="a sweep of the same grid on a held-out split: adds the "
                           "'α chosen on validation → test' table")
  parser.add_argument("--reps", type=int, default=stats.REPS,
                      help="bootstrap replicates per interval")
  args = parser.parse_args(argv)
  try:
    write_report(args.run_dir, args.frontier, args.test_dir, args.reps)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(os.path.join(args.run_dir, "report.md"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
