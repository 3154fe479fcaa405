"""The report's figures: quality against one cost axis per figure, per (task, T, γ) panel.

- Main figure: the methods the paper's main figure compares (SpecDecode, lossy SpecDecode, the
  sequential and token cascades, BiLD, SpecCascade [Token] and the best other SpecCascade rule),
  each as its frontier over α (docs in `report_curves`): frontier points joined, dominated α
  faint and unjoined, so every line is a monotone trade-off. Drafter and verifier are marked
  points; the verifier's quality is a dashed line.
- Appendix figure: every method, as small multiples with one panel per method family
  (`FAMILIES`), so no panel holds more than four curves.
- Uncertainty: a band (or, for single points, a bar) spans each point's paired bootstrap interval
  over examples of its quality difference to the verifier, drawn around the point
  (`report_stats.quality_band`); horizontal whiskers give the spread of wall-clock latency over
  trials (± one standard deviation), where a sweep ran several.

One colour map for the whole report (`STYLES`): Paul Tol's "muted" scheme, which stays
distinguishable under the common colour-vision deficiencies. Nine colours serve thirteen methods:
methods that share a colour never share a panel (a test checks it), and every method also has its
own marker, so a method looks the same in every figure.

matplotlib's object API on the Agg canvas (no pyplot state, no display); matplotlib is imported
when a figure is made, not with this module.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Mapping, Sequence

import numpy as np

from spec_cascade import methods as methods_lib
from spec_cascade import report_curves as curves
from spec_cascade import report_stats as stats
from spec_cascade import results as results_lib
from spec_cascade.results import ResultRow

TOL_MUTED = {"indigo": "#332288", "cyan": "#88CCEE", "teal": "#44AA99", "green": "#117733",
             "olive": "#999933", "sand": "#DDCC77", "rose": "#CC6677", "wine": "#882255",
             "purple": "#AA4499"}
_UNKNOWN_COLOUR = "#777777"
_UNKNOWN_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h")


@dataclasses.dataclass(frozen=True)
class Style:
  colour: str
  marker: str


# Each table method's colour and marker come with its catalogue row.
STYLES: Mapping[str, Style] = {t.name: Style(TOL_MUTED[t.colour], t.marker)
                               for t in methods_lib.TABLE if t.colour is not None}

# The paper's main-figure methods; the best other SpecCascade rule is added per panel.
MAIN_METHODS = methods_lib.MAIN_FIGURE
OTHER_SPEC_CASCADE = methods_lib.OTHER_SPEC_CASCADE
FAMILIES = methods_lib.FAMILIES
_MAX_PER_PANEL = 4

AXIS_LABELS = {
    "batch1": "latency, one example at a time (× verifier alone, wall-clock)",
    "wallclock": "latency over the sweep's batches (× verifier alone, wall-clock)",
    "modelled": "modelled latency (× verifier alone: (drafter steps · c + verifier calls) / its calls)",
    "deferral": "deferral rate (fraction of output tokens from the verifier)",
    "verifier_calls": "rejection-rate axis: verifier calls per generated token (calls / token)",
}
AXIS_TITLES = {"batch1": "batch-1 latency", "wallclock": "wall-clock latency",
               "modelled": "modelled latency", "deferral": "deferral rate",
               "verifier_calls": "verifier calls per token"}


def style(method: str) -> Style:
  """A method's colour and marker, the same in every figure."""
  if method in STYLES:
    return STYLES[method]
  return Style(_UNKNOWN_COLOUR, _UNKNOWN_MARKERS[sum(map(ord, method)) % len(_UNKNOWN_MARKERS)])


def quality_label(metric: str) -> str:
  """The y label, with the metric's scale."""
  name = curves.metric_name(metric)
  return f"{name} ({'F-measure, ' if name.startswith('ROUGE') else 'corpus, '}0–100)"


def families(methods: Sequence[str]) -> list[tuple[str, list[str]]]:
  """The appendix's panels: (title, methods present) per family, then the methods no family
  names, at most four to a panel."""
  out = []
  named = set()
  for title, members in FAMILIES:
    named.update(members)
    present = [m for m in members if m in methods]
    if present:
      out.append((title, present))
  rest = [m for m in methods if m not in named and m not in curves.REFERENCE_METHODS]
  for i in range(0, len(rest), _MAX_PER_PANEL):
    out.append(("Other methods", rest[i:i + _MAX_PER_PANEL]))
  return out


def _draw_method(ax, method: str, c: stats.CurveData) -> None:
  st = style(method)
  finite = np.isfinite(c.x) & np.isfinite(c.quality)
  dom = finite & ~c.on_frontier
  if dom.any():
    ax.plot(c.x[dom], c.quality[dom], linestyle="none", marker=st.marker, color=st.colour,
            alpha=0.25, markersize=4)
  front = np.nonzero(finite & c.on_frontier)[0]
  if len(front) == 0:
    return
  front = front[np.argsort(c.x[front])]
  xs, qs = c.x[front], c.quality[front]
  lo, hi = c.quality_lo[front], c.quality_hi[front]
  ax.plot(xs, qs, "-", marker=st.marker, color=st.colour, linewidth=1.6, markersize=5,
          label=curves.display_name(method))
  known = np.isfinite(lo) & np.isfinite(hi)
  if len(front) > 1 and known.all():
    ax.fill_between(xs, lo, hi, color=st.colour, alpha=0.15, linewidth=0)
  elif known.any():
    ax.errorbar(xs[known], qs[known], yerr=[qs[known] - lo[known], hi[known] - qs[known]],
                fmt="none", ecolor=st.colour, elinewidth=1.0, capsize=3)
  xe = c.x_err[front]
  if np.any(xe > 0):
    ax.errorbar(xs, qs, xerr=xe, fmt="none", ecolor=st.colour, elinewidth=0.8, capsize=2)


def _draw_references(ax, methods: Mapping[str, Sequence[ResultRow]], axis: str,
                     label: bool) -> None:
  marker = dict(verifier=dict(marker="*", markersize=12, color="black"),
                drafter=dict(marker="o", markersize=7, color="black", markerfacecolor="white"))
  for name in curves.REFERENCE_METHODS:
    pts = [(curves.axis_value(r, axis), r.quality) for r in methods.get(name) or []]
    pts = [p for p in pts if math.isfinite(p[1])]
    if not pts:
      continue
    q = float(np.mean([p[1] for p in pts]))
    if name == "verifier":
      ax.axhline(q, color="black", linestyle="--", linewidth=0.9,
                 label="verifier quality" if label else None)
    xs = [p[0] for p in pts if math.isfinite(p[0])]
    if xs:
      ax.plot(xs[:1], [q], linestyle="none", label=curves.display_name(name) if label else None,
              **marker[name])


def _verifier_row(methods: Mapping[str, Sequence[ResultRow]]) -> ResultRow | None:
  return next((r for r in methods.get("verifier") or [] if math.isfinite(r.quality)), None)


def _draw_panel(ax, methods: Mapping[str, Sequence[ResultRow]], names: Sequence[str], axis: str,
                reps: stats.Replicates | None, mode: str, label_references: bool) -> None:
  ver = _verifier_row(methods)
  for m in names:
    if methods.get(m):
      _draw_method(ax, m, stats.curve_data(methods[m], axis, reps, mode, reference=ver))
  _draw_references(ax, methods, axis, label_references)
  ax.grid(True, alpha=0.3)


def _caption(reps: stats.Replicates | None, methods: Mapping[str, Sequence[ResultRow]],
             mode: str) -> str:
  reading = "Pareto" if mode == "pareto" else "convex-hull"
  ver = _verifier_row(methods)
  task = ver.task if ver is not None else ""
  if reps is not None and reps.num_examples.get(task) and reps.has_quality(ver):
    lo, hi = stats.quality_band(ver, reps)
    band = (f"band / bars: {100 * reps.level:.0f} % paired bootstrap interval over "
            f"{reps.num_examples[task]} examples of each point's quality difference to the "
            f"verifier, drawn around the point (the verifier's own: {lo:.2f}–{hi:.2f})")
  else:
    band = "no per-example scores, so no band"
  return (f"Lines: {reading} frontier over α; faint markers: dominated α. {band}; "
          "whiskers: ± 1 s.d. of wall-clock latency over trials.")


def _new_figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _finish(fig, title: str, caption: str) -> None:
  fig.suptitle(title, fontsize=11)
  fig.text(0.01, 0.005, caption, fontsize=7, color="0.3", ha="left", va="bottom", wrap=True)
  fig.tight_layout(rect=(0, 0.05, 1, 1))


def main_figure(title: str, methods: Mapping[str, Sequence[ResultRow]], names: Sequence[str],
                axis: str, metric: str, reps: stats.Replicates | None, mode: str = "pareto"):
  """Quality against `axis` for the methods `names` (the main figure); returns the Figure."""
  fig = _new_figure(9.0, 5.2)
  ax = fig.add_subplot(1, 1, 1)
  _draw_panel(ax, methods, names, axis, reps, mode, label_references=True)
  ax.set_xlabel(AXIS_LABELS[axis])
  ax.set_ylabel(quality_label(metric))
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
  _finish(fig, f"{title} — {AXIS_TITLES[axis]}", _caption(reps, methods, mode))
  return fig


def appendix_figure(title: str, methods: Mapping[str, Sequence[ResultRow]], axis: str,
                    metric: str, reps: stats.Replicates | None, mode: str = "pareto"):
  """Every method against `axis`, one small panel per method family; returns the Figure."""
  panels = families(list(methods))
  if not panels:
    raise ValueError(f"{title}: no method besides the drafter and verifier to draw.")
  ncols = min(2, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  fig = _new_figure(5.2 * ncols + 0.4, 3.6 * nrows + 0.5)
  first = None
  for i, (family, names) in enumerate(panels):
    ax = fig.add_subplot(nrows, ncols, i + 1, sharex=first, sharey=first)
    first = first or ax
    _draw_panel(ax, methods, names, axis, reps, mode, label_references=i == 0)
    ax.set_title(family, fontsize=9)
    ax.set_xlabel(AXIS_LABELS[axis], fontsize=7)
    ax.set_ylabel(quality_label(metric), fontsize=8)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7, loc="lower right", frameon=False)
  _finish(fig, f"{title} — {AXIS_TITLES[axis]}, all methods", _caption(reps, methods, mode))
  return fig


def save_figure(fig, out_prefix: str, formats: Sequence[str] = ("png",)) -> list[str]:
  """Writes the figure as `<out_prefix>.<format>` for each format (atomically); returns paths."""
  paths = []
  for ext in formats:
    buf = io.BytesIO()
    fig.savefig(buf, format=ext, dpi=110, bbox_inches="tight")
    path = f"{out_prefix}.{ext}"
    results_lib.atomic_write_bytes(path, buf.getvalue())
    paths.append(path)
  return paths
