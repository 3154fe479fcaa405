"""Tests for spec_cascade.results (table I/O) and spec_cascade.report (curve reading, intervals,
tables, summary, figures, report.md / report.html)."""
import dataclasses
import json
import math
import os
import re
import struct

import numpy as np
import pytest

from spec_cascade import methods
from spec_cascade import metrics
from spec_cascade import report
from spec_cascade import report_doc
from spec_cascade import report_figures
from spec_cascade import report_stats
from spec_cascade import results
from spec_cascade.results import ResultRow

# ------------------------------------------------------------------------------------------------
# Curve reading, hand-computed answers.

MONOTONE = [(0.3, 20.0), (0.5, 24.0), (0.8, 26.0), (1.0, 26.5)]
# Overshoots at 0.6, then dips: (0.9, 25) and (1.0, 25.5) are dominated by (0.6, 27).
NON_MONOTONE = [(0.9, 25.0), (0.3, 20.0), (1.2, 28.0), (0.6, 27.0), (1.0, 25.5)]


def test_frontier_drops_dominated_points_and_sorts():
    f = report.frontier(NON_MONOTONE)
    np.testing.assert_allclose(f, [[0.3, 20.0], [0.6, 27.0], [1.2, 28.0]])


def test_frontier_indices_point_into_the_curve():
    # NON_MONOTONE's frontier is its points 1, 3, 2 (by latency); NaN points never count.
    np.testing.assert_array_equal(report.frontier_indices(NON_MONOTONE), [1, 3, 2])
    np.testing.assert_array_equal(
        report.frontier_indices([(0.5, 1.0), (math.nan, 9.0), (0.2, 2.0)]), [2])
    assert report.frontier_indices([]).shape == (0,)


def test_frontier_drops_nan_and_keeps_best_of_equal_latency():
    f = report.frontier([(0.5, 10.0), (0.5, 12.0), (math.nan, 50.0), (0.7, math.nan), (0.9, 11.0)])
    np.testing.assert_allclose(f, [[0.5, 12.0]])


def test_latency_at_quality_monotone_interpolates():
    # Between (0.5, 24) and (0.8, 26): 0.5 + (25 - 24) / 2 * 0.3 = 0.65.
    assert report.latency_at_quality(MONOTONE, 25.0) == pytest.approx(0.65)
    assert report.latency_at_quality(MONOTONE, 26.25) == pytest.approx(0.9)


def test_latency_at_quality_non_monotone_uses_frontier():
    # Frontier segment (0.3, 20) → (0.6, 27): 0.3 + 5/7 * 0.3.
    assert report.latency_at_quality(NON_MONOTONE, 25.0) == pytest.approx(0.3 + 5 / 7 * 0.3)
    # 27.5 lies on (0.6, 27) → (1.2, 28): 0.6 + 0.5 * 0.6 = 0.9.
    assert report.latency_at_quality(NON_MONOTONE, 27.5) == pytest.approx(0.9)


def test_latency_at_quality_exact_hits_and_below_start():
    assert report.latency_at_quality(NON_MONOTONE, 27.0) == pytest.approx(0.6)
    assert report.latency_at_quality(NON_MONOTONE, 20.0) == pytest.approx(0.3)
    assert report.latency_at_quality(NON_MONOTONE, 5.0) == pytest.approx(0.3)
    assert report.latency_at_quality(NON_MONOTONE, 28.0) == pytest.approx(1.2)


def test_latency_at_quality_never_reached():
    assert report.latency_at_quality(MONOTONE, 26.51) is None
    assert report.latency_at_quality([], 1.0) is None
    assert report.latency_at_quality([(math.nan, 3.0)], 1.0) is None


def test_best_quality_within_budget_boundary():
    # Budget between (0.5, 24) and (0.8, 26): 24 + 0.1 / 0.3 * 2.
    assert report.best_quality_within(MONOTONE, 0.6) == pytest.approx(24.0 + 2.0 / 3.0)
    assert report.best_quality_within(MONOTONE, 1.0) == pytest.approx(26.5)  # exactly on a point
    assert report.best_quality_within(MONOTONE, 5.0) == pytest.approx(26.5)  # past the last point
    assert report.best_quality_within(MONOTONE, 0.3) == pytest.approx(20.0)
    assert report.best_quality_within(MONOTONE, 0.2999) is None


def test_best_quality_within_non_monotone():
    # Budget 1.0 falls between frontier points (0.6, 27) and (1.2, 28): 27 + 0.4 / 0.6.
    assert report.best_quality_within(NON_MONOTONE, 1.0) == pytest.approx(27.0 + 0.4 / 0.6)
    assert report.best_quality_within(NON_MONOTONE, 0.6) == pytest.approx(27.0)


def test_convex_frontier_is_more_optimistic():
    curve = [(0.2, 10.0), (0.5, 11.0), (1.0, 20.0)]
    np.testing.assert_allclose(report.frontier(curve, "convex"), [[0.2, 10.0], [1.0, 20.0]])
    assert report.latency_at_quality(curve, 15.0, "convex") == pytest.approx(0.6)
    assert report.latency_at_quality(curve, 15.0) == pytest.approx(0.5 + 4 / 9 * 0.5)
    with pytest.raises(ValueError, match="frontier mode"):
        report.frontier(curve, "lower")


def test_frontier_rejects_bad_shape():
    with pytest.raises(ValueError, match="latency, quality"):
        report.frontier([(1.0, 2.0, 3.0)])


# ------------------------------------------------------------------------------------------------
# Results table I/O.


def _row(method, alpha=math.nan, gamma=5, quality=20.0, lat=1.0, mlat=None, defer=0.5, task="wmt",
         temperature=1.0, **kw):
    return ResultRow(task=task, method=method, rule=results.default_rule(method), alpha=alpha,
                     temperature=temperature, num_draft_tokens=gamma, quality=quality,
                     metric="bleu", wallclock_s=10.0 * lat, wallclock_std_s=0.1, rel_latency=lat,
                     modelled_rel_latency=lat if mlat is None else mlat, acceptance_rate=0.7,
                     deferral_rate=defer, tokens_per_verifier_call=3.0, num_examples=500, trials=3,
                     cost_ratio_c=0.1, **kw)


def _same_columns(a: ResultRow, b: ResultRow):
    for name in results.COLUMNS:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), name
        else:
            assert x == y, name


def test_default_rule():
    assert results.default_rule("spec_cascade_token_v3") == "token_v3"
    assert results.default_rule("token_cascade_chow") == "chow"
    assert results.default_rule("oracle_diff") == "diff"
    assert results.default_rule("specdecode_lossy") == "lossy"
    assert results.default_rule("verifier") == ""


def test_csv_round_trip_with_nan_and_extra_columns(tmp_path):
    rows = [_row("verifier", gamma=0), _row("spec_cascade_opt", alpha=0.1 + 0.2),
            _row("bild", alpha=-0.5, extra={"seed": "7", "note": "a, \"quoted\" cell"})]
    path = tmp_path / "results.csv"
    results.write_rows(path, rows)
    back = results.read_rows(path)
    assert len(back) == 3
    for a, b in zip(rows, back):
        _same_columns(a, b)
    assert back[2].extra == {"seed": "7", "note": "a, \"quoted\" cell"}
    assert back[0].extra == {"seed": "", "note": ""}  # extra columns are per table
    header = path.read_text().splitlines()[0].split(",")
    assert header[:len(results.COLUMNS)] == list(results.COLUMNS)


def test_merge_and_done_keys_support_resume(tmp_path):
    path = tmp_path / "sub" / "results.csv"
    assert results.done_keys(path) == set()
    results.merge_rows(path, [_row("verifier", gamma=0, quality=25.0),
                              _row("spec_cascade_chow", alpha=0.3, quality=21.0)])
    keys = results.done_keys(path)
    assert results.make_key("wmt", "spec_cascade_chow", 0.1 + 0.2, 1.0, 5) in keys
    assert results.make_key("wmt", "verifier", None, 1.0, 0) in keys
    assert results.make_key("wmt", "spec_cascade_chow", 0.4, 1.0, 5) not in keys
    # Re-running a point replaces it in place; new points are appended.
    merged = results.merge_rows(path, [_row("spec_cascade_chow", alpha=0.3, quality=22.0),
                                       _row("spec_cascade_chow", alpha=0.4, quality=23.0)])
    assert [r.quality for r in merged] == [25.0, 22.0, 23.0]
    assert [r.quality for r in results.read_rows(path)] == [25.0, 22.0, 23.0]
    assert len(results.done_keys(path)) == 3


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    results.write_rows(path, [_row("verifier", gamma=0)])
    before = path.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        results.write_rows(path, [_row("drafter", gamma=0)] * 100)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["results.csv"]  # no temp file left behind


def test_atomic_write_new_file_absent_on_failure(tmp_path, monkeypatch):
    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        results.atomic_write_text(tmp_path / "report.md", "x" * 10000)
    assert os.listdir(tmp_path) == []


def test_bad_rows_and_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="task and method"):
        ResultRow(task="", method="verifier")
    with pytest.raises(ValueError, match="temperature"):
        ResultRow(task="t", method="verifier", temperature=-1.0)
    bad = tmp_path / "results.csv"
    bad.write_text("task,method,quality\nwmt,verifier,high\n")
    with pytest.raises(ValueError, match="quality.*not a number"):
        results.read_rows(bad)
    bad.write_text("method,quality\nverifier,1\n")
    with pytest.raises(ValueError, match="required column"):
        results.read_rows(bad)
    with pytest.raises(FileNotFoundError, match="run the sweep"):
        results.read_rows(tmp_path / "nope.csv")


def test_fill_rel_latency():
    rows = [ResultRow(task="t", method="verifier", wallclock_s=8.0),
            ResultRow(task="t", method="specdecode", num_draft_tokens=5, wallclock_s=4.0),
            ResultRow(task="t", method="drafter", wallclock_s=2.0, rel_latency=0.3),
            ResultRow(task="u", method="drafter", wallclock_s=2.0)]
    out = results.fill_rel_latency(rows)
    assert [r.rel_latency for r in out[:3]] == [1.0, 0.5, 0.3]
    assert math.isnan(out[3].rel_latency)  # no verifier for task u


# ------------------------------------------------------------------------------------------------
# Tables and plots on a small synthetic sweep.


def _synthetic_rows():
    rows = [
        _row("drafter", gamma=0, quality=18.0, lat=0.2, mlat=0.1, defer=0.0),
        _row("verifier", gamma=0, quality=25.0, lat=1.0, defer=1.0),
        _row("token_cascade_chow", alpha=0.5, gamma=0, quality=24.0, lat=1.1, defer=0.6),
        _row("token_cascade_chow", alpha=0.2, gamma=0, quality=25.5, lat=1.3, defer=0.8),
    ]
    for g, lat in ((5, 0.6), (3, 0.7)):
        rows.append(_row("specdecode", gamma=g, quality=25.0, lat=lat, mlat=lat - 0.1, defer=1.0))
        # Token cascade curve over α (lenience up → faster, lower quality).
        for alpha, q, l in ((0.0, 25.0, lat), (0.3, 25.4, lat - 0.1), (0.6, 24.0, lat - 0.3)):
            rows.append(_row("spec_cascade_token_v3", alpha=alpha, gamma=g, quality=q, lat=l,
                             mlat=l - 0.1, defer=1 - alpha))
    return rows


def test_group_rows_shares_gamma_independent_methods():
    panels = report.group_rows(_synthetic_rows())
    assert [k for k, _ in panels] == [("wmt", 1.0, 3), ("wmt", 1.0, 5)]
    for _, methods in panels:
        assert list(methods)[:3] == ["drafter", "verifier", "token_cascade_chow"]
        assert len(methods["spec_cascade_token_v3"]) == 3


def test_paper_table_numbers():
    md = report.paper_table(_synthetic_rows(), "wallclock")
    assert "### wmt · T = 1 · γ = 5 (wall-clock latency)" in md
    assert "### wmt · T = 1 · γ = 3 (wall-clock latency)" in md
    assert "Drafter BLEU: 18.00 (rel. latency 0.20) · Verifier BLEU: 25.00 (rel. latency 1.00)" in md
    g5 = md.split("γ = 5")[1]
    # SpecDecode at γ=5: latency 0.6 at verifier quality → 40.0%; best within 1.0 → 25.00.
    assert "| SpecDecode |  | 1 | 40.0% | 25.00 |" in g5
    # Token γ=5: frontier (0.3, 24.0) → (0.5, 25.4); 25 reached at 0.3 + 1/1.4 * 0.2.
    red = 100 * (1 - (0.3 + 1 / 1.4 * 0.2))
    assert f"| SpecCascade [Token] | token_v3 | 3 | {red:.1f}% | 25.40 |" in g5
    # TokenCascade: reaches 25 only at 1.1 + 1/1.5 * 0.2 > 1 → negative reduction; within budget none.
    red_tc = 100 * (1 - (1.1 + 1 / 1.5 * 0.2))
    assert f"| TokenCascade [Chow] | chow | 2 | {red_tc:.1f}% | — |" in g5
    assert "Drafter (small) |" not in md and "Verifier (large) |" not in md


def test_paper_table_modelled_uses_modelled_latency():
    md = report.paper_table(_synthetic_rows(), "modelled")
    g5 = md.split("γ = 5")[1]
    assert "(modelled latency)" in md
    assert "| SpecDecode |  | 1 | 50.0% | 25.00 |" in g5  # modelled 0.5
    assert "Drafter BLEU: 18.00 (rel. latency 0.10)" in md


def test_paper_table_without_verifier_says_so():
    rows = [r for r in _synthetic_rows() if r.method != "verifier"]
    md = report.paper_table(rows)
    assert "No verifier row" in md
    with pytest.raises(ValueError, match="latency must be"):
        report.paper_table(rows, latency="tpu")
    with pytest.raises(ValueError, match="no rows"):
        report.paper_table([])


def test_import_is_light():
    # The report must load on machines without TensorFlow/JAX, and plotting libraries only on use.
    import subprocess
    import sys
    code = ("import sys, spec_cascade.report, spec_cascade.results; "
            "heavy = [m for m in ('matplotlib', 'tensorflow', 'jax', 'seqio') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))), timeout=60)


def test_verifier_calls_per_token_axis():
    row = lambda t: dataclasses.replace(_row("specdecode"), tokens_per_verifier_call=t)
    assert report.verifier_calls_per_token(row(4.0)) == 0.25
    assert report.verifier_calls_per_token(row(math.inf)) == 0.0  # never called the verifier
    assert math.isnan(report.verifier_calls_per_token(row(math.nan)))
    # The drafter alone never calls the verifier, though the sweep cannot divide by its 0 calls.
    drafter = dataclasses.replace(_row("drafter", gamma=0), tokens_per_verifier_call=math.nan)
    assert report.verifier_calls_per_token(drafter) == 0.0


# ------------------------------------------------------------------------------------------------
# Per-example statistics and bootstrap intervals.

TARGETS = ["the cat sat on the mat .", "a dog ran in the park", "it is raining today",
           "we went to the market", "the sun is bright", "she reads a long book",
           "birds fly over the sea", "he drinks hot tea", "the train left early",
           "my phone is broken", "they play football", "the shop opens at nine"]


def _corrupt(text: str, k: int) -> str:
    """Replaces every k-th word (k = 0: unchanged), so quality falls as k shrinks."""
    words = text.split()
    return " ".join("xx" if k and i % k == 0 else w for i, w in enumerate(words))


def test_example_stats_rescore_the_corpus_and_any_resample():
    preds = [_corrupt(t, 3) for t in TARGETS]
    st = metrics.example_stats(TARGETS, preds, "bleu")
    assert st.shape == (12, 10)
    full = metrics.corpus_scores(st, np.ones((1, 12)), "bleu")[0]
    assert full == pytest.approx(metrics.bleu(TARGETS, preds)["bleu"], abs=1e-9)
    w = metrics.bootstrap_weights(12, 5, seed=3)
    assert w.shape == (5, 12) and np.all(w.sum(axis=1) == 12)
    for row, score in zip(w, metrics.corpus_scores(st, w, "bleu")):
        idx = np.repeat(np.arange(12), row.astype(int))
        assert score == pytest.approx(
            metrics.bleu([TARGETS[i] for i in idx], [preds[i] for i in idx])["bleu"], abs=1e-9)
    rouge = metrics.example_stats(TARGETS, preds, "rouge2")
    assert rouge.shape == (12, 1) and 0 < rouge.mean() < 100
    lo, hi = metrics.bootstrap_interval(TARGETS, preds, "bleu", reps=200)
    assert lo < full < hi


def _stats_rows(tmp_path, trials_of=None):
    """A one-panel sweep folder (results.csv + per-point metrics JSON with example_stats): the
    verifier, the drafter, SpecDecode and two SpecCascade rules over α."""
    spec = [  # method, α, k of _corrupt (quality), wall-clock rel., modelled rel., defer
        ("verifier", math.nan, 5, 1.0, 1.0, 1.0), ("drafter", math.nan, 2, 0.2, 0.15, 0.0),
        ("specdecode", math.nan, 5, 0.8, 0.7, 1.0),
        ("spec_cascade_token_v3", 0.2, 0, 0.9, 0.8, 0.6),
        ("spec_cascade_token_v3", 0.5, 5, 0.6, 0.5, 0.4),
        ("spec_cascade_token_v3", 0.8, 3, 0.5, 0.4, 0.2),
        ("spec_cascade_diff", 0.1, 4, 0.95, 0.9, 0.5),
        ("spec_cascade_diff", 0.4, 2, 0.7, 0.6, 0.3),
        ("seq_cascade", 0.3, 4, 1.1, 1.0, 0.5),
    ]
    rows = []
    for method, alpha, k, lat, mlat, defer in spec:
        gamma = 0 if methods.gamma_independent(method) else 5
        preds = [_corrupt(t, k) for t in TARGETS]
        trials = (trials_of or {}).get(method, 1)
        row = _row(method, alpha=alpha, gamma=gamma, quality=metrics.bleu(TARGETS, preds)["bleu"],
                   lat=lat, mlat=mlat, defer=defer, task="debian_ende", temperature=0.0)
        row = dataclasses.replace(row, trials=trials, num_examples=len(TARGETS),
                                  wallclock_std_s=0.5 if trials > 1 else 0.0)
        rows.append(row)
        stats = metrics.example_stats(TARGETS, preds, "bleu")
        path = tmp_path / "metrics" / "debian_ende" / (results.row_point_name(row) + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"example_stats": {
            "fields": list(metrics.stat_fields("bleu")), "trials": [stats.tolist()] * trials}}))
    results.write_rows(tmp_path / "results.csv", rows)
    return rows


def test_quality_replicates_are_paired_centred_and_read_from_the_sweep(tmp_path):
    rows = _stats_rows(tmp_path)
    reps = report_stats.replicates(rows, lambda r: report_stats.load_example_stats(
        str(tmp_path), r), reps=300)
    assert set(reps.quality) == {r.key for r in rows}
    assert reps.num_examples == {"debian_ende": 12}
    by = {(r.method, r.alpha if math.isfinite(r.alpha) else None): r for r in rows}
    ver, spec = by[("verifier", None)], by[("specdecode", None)]
    # SpecDecode scored exactly the verifier's outputs: paired draws agree in every replicate.
    np.testing.assert_allclose(reps.of_quality(spec), reps.of_quality(ver))
    lo, hi = report_stats.interval(reps.of_quality(ver))
    assert lo < ver.quality < hi
    # The paired band of a point scored like the verifier has zero width; its marginal one not.
    assert report_stats.quality_band(spec, reps, ver) == pytest.approx((spec.quality,) * 2)
    mlo, mhi = report_stats.quality_band(spec, reps)
    assert mhi - mlo > 1.0
    # A sweep without per-example files: no replicates, so the report shows no interval.
    bare = report_stats.replicates(rows, lambda r: report_stats.load_example_stats(
        str(tmp_path / "none"), r), reps=10)
    assert not bare.quality and not bare.has_quality(ver)


def test_old_sweeps_fall_back_to_the_predictions_file(tmp_path):
    row = _row("verifier", gamma=0, task="debian_ende")
    path = tmp_path / "predictions" / "debian_ende" / (results.row_point_name(row) + ".jsonl")
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"target": t, "prediction": _corrupt(t, 3)}) + "\n"
                            for t in TARGETS))
    (trial,) = report_stats.load_example_stats(str(tmp_path), row)
    np.testing.assert_array_equal(
        trial, metrics.example_stats(TARGETS, [_corrupt(t, 3) for t in TARGETS], "bleu"))


def test_wallclock_spread_over_trials():
    one = dataclasses.replace(_row("specdecode", lat=0.5), trials=1)
    many = dataclasses.replace(_row("specdecode", alpha=0.1, lat=0.5), trials=4,
                               wallclock_s=10.0, wallclock_std_s=2.0)
    ver = dataclasses.replace(_row("verifier", gamma=0), trials=1)
    draws = report_stats.wallclock_replicates([ver, one, many], reps=4000)
    np.testing.assert_array_equal(draws[one.key], 0.5)  # one trial: no spread to draw from
    np.testing.assert_array_equal(draws[ver.key], 1.0)
    # Standard error of the mean of 4 trials: 0.5 · (2 / 10) / √4 = 0.05.
    assert np.std(draws[many.key]) == pytest.approx(0.05, rel=0.1)
    data = report_stats.curve_data([many, one], "wallclock", None)
    assert list(data.x_err) == pytest.approx([0.1, 0.0])  # by α; ± 1 s.d. of the trials, relative


def test_read_curve_hand_computed_replicates():
    ver = _row("verifier", gamma=0, quality=25.0)
    pts = [_row("spec_cascade_opt", alpha=0.1, quality=24.0, lat=0.4),
           _row("spec_cascade_opt", alpha=0.2, quality=26.0, lat=0.8)]
    q = {ver.key: np.array([25.0, 26.5, 23.0]), pts[0].key: np.array([24.0, 24.0, 24.0]),
         pts[1].key: np.array([26.0, 26.0, 26.0])}
    reps = report_stats.Replicates(3, 0.9, q, {}, {"wmt": 10})
    rd = report_stats.read_curve(pts, ver, "wallclock", reps)
    # Point: 25 is reached halfway between 0.4 and 0.8 → 0.6 → 40 % reduction.
    assert rd.reduction == pytest.approx(40.0) and rd.best_quality == pytest.approx(26.0)
    # Replicates: the verifier at 25, 26.5 (never reached), 23 (reached at 0.4).
    np.testing.assert_allclose(rd.reduction_reps, [40.0, -math.inf, 60.0])
    np.testing.assert_allclose(rd.best_gain_reps, [1.0, -0.5, 3.0])
    assert rd.has_interval and report_stats.within_noise(rd.best_gain_reps, 0.5)
    assert not report_stats.within_noise(np.array([1.0, 2.0, 3.0]))
    assert report_stats.interval(rd.reduction_reps, 0.5) == (-math.inf, 60.0)
    np.testing.assert_array_equal(
        report_stats.difference(np.array([-math.inf, 5.0, -math.inf]),
                                np.array([-math.inf, -math.inf, 1.0])), [0.0, math.inf, -math.inf])


# ------------------------------------------------------------------------------------------------
# Colours, summary, figures, report.


def test_methods_sharing_a_colour_never_share_a_panel():
    panels = [tuple(report_figures.MAIN_METHODS) + (m,) for m in report_figures.OTHER_SPEC_CASCADE]
    panels += [members for _, members in report_figures.FAMILIES]
    for names in panels:
        colours = [report_figures.style(m).colour for m in names]
        assert len(set(colours)) == len(colours), names
    styles = {(s.colour, s.marker) for s in report_figures.STYLES.values()}
    assert len(styles) == len(report_figures.STYLES)  # every method looks different
    everything = [m for _, ms in report_figures.FAMILIES for m in ms]
    assert sorted(everything) == sorted(set(report.METHOD_ORDER) - {"drafter", "verifier"})


def test_summary_names_the_winner_with_its_interval(tmp_path):
    rows = _stats_rows(tmp_path)
    reps = report_stats.replicates(rows, lambda r: report_stats.load_example_stats(
        str(tmp_path), r), reps=200)
    lines = report.summary_lines(rows, reps)
    assert len(lines) == 2 and "90 % bootstrap interval" in lines[0]
    # Modelled latency (no batch-1 here): SpecCascade [Token] reaches the verifier's BLEU at its
    # α = 0.5 point (modelled 0.5, same outputs as the verifier) → 50 % lower; SpecDecode 30 %.
    line = lines[1]
    assert line.startswith("**debian_ende · T = 0 · γ = 5** (modelled latency): "
                           "SpecCascade [Token] matches the verifier's BLEU")
    assert "at 50.0% lower latency [" in line and "next SpecDecode 30.0%" in line
    assert re.search(r"paired difference 20\.0 points \[[-−0-9.∞]+, [-+0-9.∞]+\]", line)
    many = [dataclasses.replace(r, task=f"t{i}") for i in range(6) for r in rows]
    lines = report.summary_lines(many)
    assert len(lines) == report.SUMMARY_LINES and "no intervals" in lines[0]
    assert lines[-1] == "… and 3 more task × T × γ panels in the tables below."


def test_tables_mark_differences_within_noise(tmp_path):
    rows = _stats_rows(tmp_path)
    reps = report_stats.replicates(rows, lambda r: report_stats.load_example_stats(
        str(tmp_path), r), reps=200)
    md = report.paper_table(rows, "modelled", reps=reps)
    # SpecDecode has the verifier's outputs: its best quality equals the verifier's in every
    # replicate (≈), while its 30 % reduction is the same in all of them (not ≈).
    assert re.search(r"\| SpecDecode \|  \| 1 \| 30\.0% \[30\.0, 30\.0\] \| ≈ [0-9.]+ \[", md)
    assert "90 % CI" in md


def _png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path
    return struct.unpack(">II", data[16:24])


def test_figures_name_axes_with_units_and_keep_panels_small(tmp_path):
    rows = _stats_rows(tmp_path)
    reps = report_stats.replicates(rows, lambda r: report_stats.load_example_stats(
        str(tmp_path), r), reps=100)
    ((key, methods),) = report.group_rows(rows)
    names = report.main_methods(methods, reps)
    assert names == ["specdecode", "seq_cascade", "spec_cascade_token_v3", "spec_cascade_diff"]
    figs = [report_figures.main_figure("t", methods, names, axis, "bleu", reps)
            for axis in report_figures.AXIS_LABELS]
    figs.append(report_figures.appendix_figure("t", methods, "modelled", "bleu", reps))
    for fig in figs:
        for ax in fig.axes:
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert re.search(r"\(.+\)", label), label  # a unit or scale in brackets
            labelled = [h for h in ax.get_legend_handles_labels()[1]
                        if h not in ("Drafter (small)", "Verifier (large)", "verifier quality")]
            assert len(labelled) <= (7 if len(fig.axes) == 1 else 4)
    assert figs[0].axes[0].get_ylabel() == "BLEU (corpus, 0–100)"
    assert "wall-clock" in figs[1].axes[0].get_xlabel()  # the order of AXIS_LABELS
    assert "modelled" in figs[2].axes[0].get_xlabel()
    # The frontier line of a method holds only its Pareto points (dominated α drawn apart).
    ax = figs[2].axes[0]
    diff_line = next(l for l in ax.get_lines() if l.get_label() == "SpecCascade [Diff]")
    assert len(diff_line.get_xdata()) == 2
    paths = report_figures.save_figure(figs[2], str(tmp_path / "f"), ("png", "svg"))
    w, h = _png_size(paths[0])
    assert 500 < w < 2500 and 300 < h < 1500
    assert b"<svg" in open(paths[1], "rb").read()[:2000]


def test_write_report_summary_tables_figures_and_html(tmp_path, capsys):
    rows = _stats_rows(tmp_path, trials_of={"specdecode": 3})
    (tmp_path / "settings.json").write_text(json.dumps({"split": "validation"}))
    assert report.main([str(tmp_path), "--reps", "100"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.md")
    md = (tmp_path / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# Speculative cascades: results"
    summary = md[:md.index("Source:")]
    assert summary.count("\n- ") == 1 and "SpecCascade [Token]" in summary
    assert md.index("Source:") < md.index("## Tables") < md.index("## Figures") \
        < md.index("## Appendix")
    assert "(wall-clock latency)" in md and "(modelled latency)" in md
    assert "one example at a time" not in md  # no batch-1 columns in these rows
    assert "α chosen on validation → test" in md and "--test_dir" in md
    assert f"({len(rows)} operating points; tasks: debian_ende; split: validation)" in md
    assert "the main figures draw SpecCascade [Diff]" in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    slug = "debian_ende_T0_g5"
    for axis in ("latency", "modelled_latency", "deferral", "verifier_calls"):
        assert f"quality_vs_{axis}__{slug}.png" in images
        assert f"appendix_quality_vs_{axis}__{slug}.png" in images
        assert (tmp_path / f"quality_vs_{axis}__{slug}.svg").stat().st_size > 5000
    for name in images:
        w, h = _png_size(tmp_path / name)
        assert 500 < w < 2500 and 300 < h < 2000, name
    # SpecDecode ran 3 trials with s.d. 0.5 s of 8 s: ± 0.05 in the points table.
    assert "| SpecDecode | — | " in md and "0.800 ± 0.050" in md
    html = (tmp_path / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(images) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "href=" not in html and "<link" not in html and "@import" not in html
    assert "<table>" in html and "SpecCascade [Token]" in html
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "run the sweep" in capsys.readouterr().err


def test_alpha_chosen_on_validation_is_read_on_test(tmp_path):
    dev = _stats_rows(tmp_path / "dev")
    # On test the verifier scores lower and SpecCascade [Token] at α = 0.5 is slower.
    test = [dataclasses.replace(r, quality=r.quality - 1.0 if r.method == "verifier" else r.quality,
                                modelled_rel_latency=0.55 if r.alpha == 0.5 else
                                r.modelled_rel_latency) for r in dev]
    md = report_doc.to_markdown(report.alpha_transfer_blocks(dev, test, "modelled"))
    # Token: the cheapest α reaching the verifier's BLEU on dev is 0.5 (modelled 0.5).
    assert re.search(r"\| SpecCascade \[Token\] \| 0\.5 \| 0\.500 \| [0-9.]+ \| yes \| 0\.550 \| "
                     r"[0-9.]+ \| yes \|", md)
    # SpecCascade [Diff] never reaches it on dev: its closest α is named as such.
    assert re.search(r"\| SpecCascade \[Diff\] \| 0\.1 \| 0\.900 \| [0-9.]+ \| no \(closest α\)", md)
    # The same through the command line: the test sweep's folder holds only its results table,
    # so its quality has no interval there, and the verdict is read off the point values.
    results.write_rows(tmp_path / "test" / "results.csv", test)
    assert report.main([str(tmp_path / "dev"), "--test_dir", str(tmp_path / "test"),
                        "--reps", "20"]) == 0
    full = (tmp_path / "dev" / "report.md").read_text()
    section = full[full.index("## α chosen on validation → test"):full.index("## Figures")]
    assert "| SpecCascade [Token] | 0.5 | 0.500 |" in section and "0.550" in section
    missing = [r for r in test if not (r.method == "spec_cascade_token_v3" and r.alpha == 0.5)]
    md = report_doc.to_markdown(report.alpha_transfer_blocks(dev, missing, "modelled"))
    assert "not in the test sweep" in md
