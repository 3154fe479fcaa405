"""Tests for spec_cascade.results (table I/O) and spec_cascade.report (curve reading, tables, plots)."""
import dataclasses
import math
import os

import numpy as np
import pytest

from spec_cascade import report
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


def test_plots_write_png_and_svg(tmp_path):
    rows = _synthetic_rows() + [_row("verifier", gamma=0, quality=30.0, temperature=0.0)]
    paths = report.plot_quality_vs_latency(rows, str(tmp_path / "q_lat"))
    paths += report.plot_quality_vs_deferral(rows, str(tmp_path / "q_def"))
    assert sorted(os.path.basename(p) for p in paths) == [
        "q_def.png", "q_def.svg", "q_lat.png", "q_lat.svg"]
    for p in paths:
        data = open(p, "rb").read()
        assert len(data) > 2000
        if p.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert b"<svg" in data[:2000]


def test_write_report_and_cli(tmp_path, capsys):
    results.write_rows(tmp_path / "results.csv", _synthetic_rows())
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Throughput: wall-clock" in md and "## Modelled latency" in md
    assert "one example at a time" not in md  # no batch-1 columns in these rows
    assert "(wall-clock latency)" in md and "(modelled latency)" in md
    assert "![quality_vs_latency](quality_vs_latency.png)" in md
    for name in ("quality_vs_latency", "quality_vs_modelled_latency", "quality_vs_deferral",
                 "quality_vs_verifier_calls"):
        for ext in ("png", "svg"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
    assert capsys.readouterr().out.strip().endswith("report.md")
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "run the sweep" in capsys.readouterr().err


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
