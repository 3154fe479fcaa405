"""Paper-style tables and plots from a sweep's results table (docs/paper.md §6–§7).

Each method traces a curve over its lenience α: points (relative latency, quality). The paper's main
table reads two numbers off each curve:
  (a) the latency reduction 1 − rel_latency at which the method first matches the verifier's quality;
  (b) the best quality the method reaches without exceeding the verifier's latency.

How a curve is read (the "frontier"):
- Points with NaN latency or quality are dropped.
- `frontier="pareto"` (default): keep only Pareto-efficient points — sorted by latency, a point stays
  only if its quality is strictly higher than every faster point's. An α that is both slower and worse
  than another α is never the one a user would pick, so it must not decide the answer (this is what
  makes non-monotone curves, e.g. a cascade that overshoots the verifier's quality and then falls back
  to it as α → SpecDecode, well-defined).
- Between adjacent frontier points the curve is linear. This is achievable in expectation: running
  α₁ on a fraction w of the examples and α₂ on the rest gives the w-weighted mean of both latency and
  quality. It is therefore a conservative reading of the curve.
- `frontier="convex"`: the upper concave hull of the Pareto points (equivalently, the lower convex
  hull of latency as a function of quality) — every mixture of any two α values, the most optimistic
  achievable reading. Offered for comparison; the tables use the Pareto reading.

Pure numpy + matplotlib (Agg, imported lazily); no TensorFlow or JAX.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
from typing import Iterable, Sequence

import numpy as np

from spec_cascade import gin_cli
from spec_cascade import results as results_lib
from spec_cascade.results import ResultRow

LATENCY_KINDS = ("batch1", "wallclock", "modelled")
_LATENCY_FIELDS = {"batch1": "rel_latency_batch1", "wallclock": "rel_latency",
                   "modelled": "modelled_rel_latency"}
_LATENCY_LABELS = {"batch1": "batch-1", "wallclock": "wall-clock",
                   "modelled": "modelled"}
FRONTIERS = ("pareto", "convex")

# Row order and display names of the paper's tables (unknown methods follow, sorted).
_METHOD_ORDER = (
    "drafter", "verifier", "seq_cascade", "token_cascade_chow", "oracle_diff", "specdecode",
    "specdecode_lossy", "bild", "spec_cascade_bild_star", "spec_cascade_chow", "spec_cascade_diff",
    "spec_cascade_opt", "spec_cascade_token_v1", "spec_cascade_token_v2", "spec_cascade_token_v3",
)
_DISPLAY = {
    "drafter": "Drafter (small)",
    "verifier": "Verifier (large)",
    "seq_cascade": "SeqCascade [Chow]",
    "token_cascade_chow": "TokenCascade [Chow]",
    "oracle_diff": "Oracle cascade [Diff]",
    "specdecode": "SpecDecode",
    "specdecode_lossy": "SpecDecode [Lossy]",
    "bild": "BiLD",
    "spec_cascade_bild_star": "SpecCascade [BiLD*]",
    "spec_cascade_chow": "SpecCascade [Chow]",
    "spec_cascade_diff": "SpecCascade [Diff]",
    "spec_cascade_opt": "SpecCascade [OPT]",
    "spec_cascade_token_v1": "SpecCascade [Token v1]",
    "spec_cascade_token_v2": "SpecCascade [Token v2]",
    "spec_cascade_token_v3": "SpecCascade [Token]",
}
_METRIC_DISPLAY = {"bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougelsum": "ROUGE-Lsum"}
_REFERENCE_METHODS = ("drafter", "verifier")


def display_name(method: str) -> str:
    return _DISPLAY.get(method, method)


def _metric_name(metric: str) -> str:
    return _METRIC_DISPLAY.get(metric.lower().replace("_", "").replace("-", ""), metric or "quality")


# ----------------------------------------------------------------------------------------------
# Reading a curve.


def frontier(curve: Iterable[Sequence[float]], mode: str = "pareto") -> np.ndarray:
    """The frontier of a curve, as described in the module docstring.

    Args:
      curve: points (latency, quality), shape [N, 2] or an iterable of pairs; any order.
      mode: "pareto" or "convex".
    Returns:
      float64 [K, 2], K ≤ N, sorted by latency with latency and quality both strictly increasing.
    """
    if mode not in FRONTIERS:
        raise ValueError(f"frontier mode must be one of {FRONTIERS}, got {mode!r}.")
    pts = np.asarray(list(curve) if not isinstance(curve, np.ndarray) else curve, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"a curve is a list of (latency, quality) pairs, got shape {pts.shape}.")
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    # Latency ascending; at equal latency the best quality first, so the others are dropped.
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]
    kept = []
    for lat, q in pts:
        if not kept or q > kept[-1][1]:
            kept.append((lat, q))
    if mode == "convex":
        hull: list[tuple[float, float]] = []
        for p in kept:
            # Pop the last hull point while it lies on or below the chord from its predecessor to p.
            while len(hull) >= 2:
                (ox, oy), (ax, ay) = hull[-2], hull[-1]
                if (ax - ox) * (p[1] - oy) - (ay - oy) * (p[0] - ox) >= 0:
                    hull.pop()
                else:
                    break
            hull.append(p)
        kept = hull
    return np.asarray(kept, dtype=np.float64).reshape(-1, 2)


def latency_at_quality(curve: Iterable[Sequence[float]], target_quality: float,
                       mode: str = "pareto") -> float | None:
    """The lowest latency at which the curve's quality is ≥ `target_quality`.

    Linear interpolation between adjacent frontier points; None if the curve never reaches the
    target (or has no finite points).
    """
    f = frontier(curve, mode)
    if len(f) == 0 or not math.isfinite(target_quality):
        return None
    if f[0, 1] >= target_quality:
        return float(f[0, 0])
    for (l0, q0), (l1, q1) in zip(f[:-1], f[1:]):
        if q0 < target_quality <= q1:
            return float(l0 + (target_quality - q0) / (q1 - q0) * (l1 - l0))
    return None


def best_quality_within(curve: Iterable[Sequence[float]], max_latency: float,
                        mode: str = "pareto") -> float | None:
    """The best quality reachable at latency ≤ `max_latency`.

    When the budget falls between two adjacent frontier points the quality is interpolated at the
    budget; None if no point is within budget.
    """
    f = frontier(curve, mode)
    if len(f) == 0 or not math.isfinite(max_latency):
        return None
    within = np.nonzero(f[:, 0] <= max_latency)[0]
    if len(within) == 0:
        return None
    i = int(within[-1])
    if i + 1 < len(f):
        (l0, q0), (l1, q1) = f[i], f[i + 1]
        return float(q0 + (max_latency - l0) / (l1 - l0) * (q1 - q0))
    return float(f[i, 1])


# ----------------------------------------------------------------------------------------------
# Grouping rows into (task, T, γ) panels.


def _is_gamma_independent(r: ResultRow) -> bool:
    return r.method in results_lib.GAMMA_INDEPENDENT_METHODS or r.num_draft_tokens == 0


def _method_sort_key(method: str):
    if method in _METHOD_ORDER:
        return (0, _METHOD_ORDER.index(method), method)
    return (1, 0, method)


def group_rows(rows: Sequence[ResultRow]) -> list[tuple[tuple, dict[str, list[ResultRow]]]]:
    """Splits rows into panels keyed by (task, T, γ), each a {method: rows} dict.

    γ-independent rows (drafter, verifier, sequential cascades; γ = 0) join every γ panel of their
    (task, T); if they were recorded at several γ, a panel takes those at its own γ, else those at the
    smallest γ. A (task, T) with no γ-dependent rows forms one panel with γ = None.
    """
    by_tt: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        by_tt.setdefault((r.task, results_lib._norm_float(r.temperature)), []).append(r)
    panels = []
    for (task, temp) in sorted(by_tt, key=lambda k: (k[0], k[1])):
        tt_rows = by_tt[(task, temp)]
        gammas = sorted({r.num_draft_tokens for r in tt_rows if not _is_gamma_independent(r)})
        for g in gammas or [None]:
            methods: dict[str, list[ResultRow]] = {}
            for m in sorted({r.method for r in tt_rows}, key=_method_sort_key):
                mrows = [r for r in tt_rows if r.method == m]
                same = [r for r in mrows if g is not None and r.num_draft_tokens == g]
                if same:
                    methods[m] = same
                elif all(_is_gamma_independent(r) for r in mrows):
                    g0 = min(r.num_draft_tokens for r in mrows)
                    methods[m] = [r for r in mrows if r.num_draft_tokens == g0]
            panels.append(((task, temp, g), methods))
    return panels


def _latency(r: ResultRow, kind: str) -> float:
    if kind not in LATENCY_KINDS:
        raise ValueError(f"latency must be one of {LATENCY_KINDS}, got {kind!r}.")
    return getattr(r, _LATENCY_FIELDS[kind])


def _by_alpha(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """Rows ordered by α, rows without α (NaN) last."""
    return sorted(rows, key=lambda r: (math.isnan(r.alpha), 0.0 if math.isnan(r.alpha) else r.alpha))


def curve_of(rows: Sequence[ResultRow], latency: str = "wallclock") -> np.ndarray:
    """[N, 2] (latency, quality) of a method's rows, ordered by α (NaN α last)."""
    pts = [(_latency(r, latency), r.quality) for r in _by_alpha(rows)]
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def _panel_title(key: tuple) -> str:
    task, temp, g = key
    t = f"{task} · T = {temp:g}"
    return t + (f" · γ = {g}" if g is not None else "")


# ----------------------------------------------------------------------------------------------
# Tables.


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _reference(methods: dict[str, list[ResultRow]], name: str, latency: str):
    """(quality, latency) of a one-point reference method (mean over its rows), or None."""
    rs = methods.get(name)
    if not rs:
        return None
    q = float(np.nanmean([r.quality for r in rs])) if any(math.isfinite(r.quality) for r in rs) else math.nan
    lats = [_latency(r, latency) for r in rs if math.isfinite(_latency(r, latency))]
    return q, (float(np.mean(lats)) if lats else math.nan)


def paper_table(rows: Sequence[ResultRow], latency: str = "wallclock", mode: str = "pareto") -> str:
    """Markdown tables in the paper's form, one per (task, T, γ).

    Per method: (a) latency reduction 1 − rel_latency when matching the verifier's quality (negative
    when the method is slower than the verifier there; "—" if never matched); (b) best quality within
    the verifier's latency ("—" if no operating point is that fast).
    """
    if latency not in LATENCY_KINDS:
        raise ValueError(f"latency must be one of {LATENCY_KINDS}, got {latency!r}.")
    rows = list(rows)
    if not rows:
        raise ValueError("paper_table got no rows; the results table is empty.")
    kind = _LATENCY_LABELS[latency]
    out = []
    for key, methods in group_rows(rows):
        metric = _metric_name(next((r.metric for rs in methods.values() for r in rs if r.metric), ""))
        out.append(f"### {_panel_title(key)} ({kind} latency)\n")
        ver = _reference(methods, "verifier", latency)
        dra = _reference(methods, "drafter", latency)
        refs = []
        for label, ref in (("Drafter", dra), ("Verifier", ver)):
            if ref is not None:
                refs.append(f"{label} {metric}: {_fmt(ref[0])} (rel. latency {_fmt(ref[1])})")
        if refs:
            out.append(" · ".join(refs) + "\n")
        if ver is None or not math.isfinite(ver[0]):
            out.append("_No verifier row with a quality in this panel: the paper's columns are "
                       "relative to the verifier, so they cannot be computed. Add the `verifier` "
                       "method to the sweep._\n")
            continue
        v_quality = ver[0]
        # The verifier's own latency is 1 by definition; a measured value is used when present so
        # the modelled table stays consistent with its own normalisation.
        budget = ver[1] if math.isfinite(ver[1]) else 1.0
        out.append(f"| Method | Rule | α points | Latency reduction at verifier {metric} (↑) "
                   f"| Best {metric} within verifier latency (↑) |")
        out.append("|---|---|---:|---:|---:|")
        for m, rs in methods.items():
            if m in _REFERENCE_METHODS:
                continue
            curve = curve_of(rs, latency)
            lat = latency_at_quality(curve, v_quality, mode)
            best = best_quality_within(curve, budget, mode)
            red = None if lat is None else 100.0 * (1.0 - lat / budget)
            rule = rs[0].rule or results_lib.default_rule(m)
            out.append(f"| {display_name(m)} | {rule} | {len(rs)} | "
                       f"{_fmt(red, '.1f') + ('%' if red is not None else '')} | {_fmt(best)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def points_table(rows: Sequence[ResultRow]) -> str:
    """Every operating point, per panel (for the report's appendix)."""
    out = []
    for key, methods in group_rows(rows):
        out.append(f"#### {_panel_title(key)}\n")
        out.append("| Method | α | quality | rel. latency (batch 1) | rel. latency (batches) | "
                   "modelled | accept | defer | tok/call |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m, rs in methods.items():
            for r in _by_alpha(rs):
                out.append(f"| {display_name(m)} | {_fmt(r.alpha, '.3g')} | {_fmt(r.quality)} | "
                           f"{_fmt(r.rel_latency_batch1, '.3f')} | "
                           f"{_fmt(r.rel_latency, '.3f')} | {_fmt(r.modelled_rel_latency, '.3f')} | "
                           f"{_fmt(r.acceptance_rate, '.3f')} | {_fmt(r.deferral_rate, '.3f')} | "
                           f"{_fmt(r.tokens_per_verifier_call, '.2f')} |")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no pyplot global state, no display needed).


def _save_figure(fig, out_prefix: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight")
        path = f"{out_prefix}.{ext}"
        results_lib.atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _plot_panels(rows: Sequence[ResultRow], out_prefix: str, x_of, x_label: str,
                 verifier_line: bool) -> list[str]:
    import matplotlib  # lazy: importing matplotlib costs ~0.3 s
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    if not rows:
        raise ValueError("nothing to plot: no result rows.")
    panels = group_rows(rows)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.2 * ncols + 2.4, 4.0 * nrows))
    FigureCanvasAgg(fig)
    all_methods = sorted({r.method for r in rows}, key=_method_sort_key)
    cmap = matplotlib.colormaps["tab20"]
    colors = {m: cmap(i % 20) for i, m in enumerate(all_methods)}
    handles = {}
    for i, (key, methods) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        metric = _metric_name(next((r.metric for rs in methods.values() for r in rs if r.metric), ""))
        for m, rs in methods.items():
            pts = [(x_of(r), r.quality) for r in _by_alpha(rs)]
            pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
            pts = pts[np.all(np.isfinite(pts), axis=1)]
            if len(pts) == 0:
                continue
            style = dict(color=colors[m], label=display_name(m))
            if m == "verifier":
                (h,) = ax.plot(pts[:, 0], pts[:, 1], "k*", markersize=11, label=display_name(m))
            elif len(pts) == 1:
                (h,) = ax.plot(pts[:, 0], pts[:, 1], "D", markersize=7, **style)
            else:
                (h,) = ax.plot(pts[:, 0], pts[:, 1], "-o", markersize=3, linewidth=1.3, **style)
            handles.setdefault(display_name(m), h)
        ver = _reference(methods, "verifier", "wallclock")
        if verifier_line and ver is not None and math.isfinite(ver[0]):
            ax.axhline(ver[0], color="k", linestyle="--", linewidth=0.8)
        ax.set_title(_panel_title(key), fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save_figure(fig, out_prefix)


def plot_quality_vs_latency(rows: Sequence[ResultRow], out_prefix: str,
                            latency: str = "wallclock") -> list[str]:
    """Quality vs relative latency, one line per method over α, one panel per (task, T, γ).

    A dashed horizontal line marks the verifier's quality. Writes `<out_prefix>.png` and `.svg` and
    returns their paths.
    """
    if latency not in LATENCY_KINDS:
        raise ValueError(f"latency must be one of {LATENCY_KINDS}, got {latency!r}.")
    label = f"relative latency ({_LATENCY_LABELS[latency]})"
    return _plot_panels(rows, out_prefix, lambda r: _latency(r, latency), label, verifier_line=True)


def verifier_calls_per_token(r: ResultRow) -> float:
    """The ICLR version's rejection-rate axis: verifier calls per generated token (1 for the
    verifier alone, 1 / tokens per call for speculative methods, the deferral share for a
    sequential cascade)."""
    t = r.tokens_per_verifier_call
    return 1.0 / t if math.isfinite(t) and t > 0 else (0.0 if t == math.inf else math.nan)


def plot_quality_vs_verifier_calls(rows: Sequence[ResultRow], out_prefix: str) -> list[str]:
    """Quality vs verifier calls per generated token (the rejection-rate axis); PNG + SVG."""
    return _plot_panels(rows, out_prefix, verifier_calls_per_token,
                        "verifier calls per generated token", verifier_line=True)


def plot_quality_vs_deferral(rows: Sequence[ResultRow], out_prefix: str) -> list[str]:
    """Quality vs deferral rate (fraction of tokens emitted from the verifier); PNG + SVG."""
    return _plot_panels(rows, out_prefix, lambda r: r.deferral_rate, "deferral rate",
                        verifier_line=True)


# ----------------------------------------------------------------------------------------------
# The report.


def write_report(run_dir: str, mode: str = "pareto") -> str:
    """Reads `run_dir/results.csv`; writes `run_dir/report.md` and the plots; returns the markdown."""
    path = os.path.join(run_dir, results_lib.RESULTS_FILENAME)
    rows = results_lib.read_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows; nothing to report.")
    batch1 = any(math.isfinite(r.rel_latency_batch1) for r in rows)
    plots = {}
    if batch1:
        plots["quality_vs_batch1_latency"] = plot_quality_vs_latency(
            rows, os.path.join(run_dir, "quality_vs_batch1_latency"), "batch1")
    plots.update({
        "quality_vs_latency": plot_quality_vs_latency(
            rows, os.path.join(run_dir, "quality_vs_latency"), "wallclock"),
        "quality_vs_modelled_latency": plot_quality_vs_latency(
            rows, os.path.join(run_dir, "quality_vs_modelled_latency"), "modelled"),
        "quality_vs_deferral": plot_quality_vs_deferral(
            rows, os.path.join(run_dir, "quality_vs_deferral")),
        "quality_vs_verifier_calls": plot_quality_vs_verifier_calls(
            rows, os.path.join(run_dir, "quality_vs_verifier_calls")),
    })
    tasks = sorted({r.task for r in rows})
    frontier_name = "Pareto" if mode == "pareto" else "convex-hull"
    md = [
        "# Speculative cascades: results\n",
        f"Source: `{results_lib.RESULTS_FILENAME}` ({len(rows)} operating points; tasks: "
        f"{', '.join(tasks)}).\n",
        "Columns: (a) latency reduction 1 − rel. latency at which the method first matches the "
        "verifier's quality; (b) the best quality reachable within the verifier's latency. Curves "
        f"are read on their {frontier_name} frontier over α with linear interpolation between "
        "adjacent points (see `spec_cascade/report.py`). '—' means never reached / no point "
        "within budget.\n",
    ]
    if batch1:
        n = sorted({r.extra.get("latency_examples", "") for r in rows} - {""})
        md += ["## Latency: one example at a time (batch 1, the paper's regime)\n",
               f"Mean seconds per example, each decoded alone, relative to the verifier alone "
               f"(on the first {', '.join(n) or '?'} examples of each task).\n",
               paper_table(rows, "batch1", mode)]
    md += [
        "## Throughput: wall-clock over the sweep's batches (relative to the verifier alone)\n",
        paper_table(rows, "wallclock", mode),
        "## Modelled latency ((drafter steps · c + verifier calls) / verifier-alone steps)\n",
        paper_table(rows, "modelled", mode),
        "## Plots\n",
    ]
    for name, paths in plots.items():
        md.append(f"![{name}]({os.path.basename(paths[0])})\n")
    md += ["## All operating points\n", "<details><summary>table</summary>\n",
           points_table(rows), "</details>\n"]
    text = "\n".join(md)
    results_lib.atomic_write_text(os.path.join(run_dir, "report.md"), text)
    return text


@gin_cli.cli_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spec_cascade.report",
        description="Writes RUN_DIR/report.md and plots from RUN_DIR/results.csv.")
    parser.add_argument("run_dir", help="a sweep's output folder (holds results.csv)")
    parser.add_argument("--frontier", choices=FRONTIERS, default="pareto",
                        help="how curves are read (see the module docstring)")
    args = parser.parse_args(argv)
    try:
        write_report(args.run_dir, args.frontier)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(os.path.join(args.run_dir, "report.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
