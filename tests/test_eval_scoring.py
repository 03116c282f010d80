"""Scores exactly as docs/science.md section 2 defines them: S_l per item, per subset and overall, S_q, S."""

import pytest

from lw.eval.judge import DIMENSIONS, FAILED, OK, UNPARSEABLE
from lw.eval.scoring import longbench_metrics, quality_scores, ruler_metrics, score_lengths


def rows_of(*pairs, language="en"):
    """Rows with required length l and a response of exactly l' English words."""
    return [{"id": str(i), "prompt": f"p{i}", "length": l, "response": " ".join(["w"] * produced),
             "language": language} for i, (l, produced) in enumerate(pairs)]


def test_item_scores_and_overall_mean_over_items_not_subsets():
    # subset 0-500: (100 -> 100 words) 100, (100 -> 200) 100*(1-1/3), (400 -> 0) 0
    # subset 4000-20000: (4000 -> 2000) 100*(1-(2-1)/2) = 50
    rows = score_lengths(rows_of((100, 100), (100, 200), (400, 0), (4000, 2000)))
    assert [r["produced"] for r in rows] == [100, 200, 0, 2000]
    assert [r["S_l"] for r in rows] == pytest.approx([100, 200 / 3, 0, 50])
    metrics = longbench_metrics(rows, "lbw")
    assert metrics["lbw/S_l"] == pytest.approx((100 + 200 / 3 + 0 + 50) / 4)  # 54.1667, not (55.56 + 50) / 2
    assert metrics["lbw/0-500/S_l"] == pytest.approx((100 + 200 / 3) / 3)
    assert metrics["lbw/0-500/n"] == 3
    assert metrics["lbw/4000-20000/S_l"] == pytest.approx(50)
    assert "lbw/500-2000/S_l" not in metrics and "lbw/S_q" not in metrics
    assert metrics["lbw/max_output_words"] == 2000


def test_subset_boundaries_are_half_open_and_the_last_closed():
    lengths = [499, 500, 1999, 2000, 3999, 4000, 20000]
    rows = score_lengths(rows_of(*[(l, l) for l in lengths]))
    metrics = longbench_metrics(rows, "b")
    assert [metrics[f"b/{s}/n"] for s in ("0-500", "500-2000", "2000-4000", "4000-20000")] == [1, 2, 2, 2]
    assert metrics["b/n"] == 7


def test_length_score_falls_to_zero_at_a_third_and_at_four_times():
    rows = score_lengths(rows_of((300, 100), (300, 1200), (300, 150), (300, 600)))
    assert [r["S_l"] for r in rows] == pytest.approx([0, 0, 50, 100 * (1 - 1 / 3)])


def judgement(i, score, status=OK):
    scores = {d: score for d in DIMENSIONS} if status == OK else None
    return {"id": str(i), "status": status, "scores": scores}


def test_quality_maps_dimension_means_and_skips_unparseable():
    judgements = [judgement(0, 5), judgement(1, 3), judgement(2, None, UNPARSEABLE), judgement(3, None, FAILED)]
    judgements[0]["scores"]["Accuracy"] = 1  # Accuracy mean (1 + 3) / 2 = 2 -> 25
    quality = quality_scores(judgements)
    assert quality["Relevance"] == pytest.approx(75)  # mean 4 -> (4 - 1) * 25
    assert quality["Accuracy"] == pytest.approx(25)
    assert quality["S_q"] == pytest.approx((75 * 5 + 25) / 6)
    assert quality_scores([judgement(0, None, UNPARSEABLE)]) is None


def test_s_is_the_mean_of_s_l_and_s_q_with_counts():
    rows = score_lengths(rows_of((100, 100), (100, 50), (1000, 1000), (1000, 1000)))
    judgements = [judgement(0, 5), judgement(1, 2), judgement(2, 4), judgement(3, None, UNPARSEABLE)]
    metrics = longbench_metrics(rows, "b", judgements)
    s_l = (100 + 50 + 100 + 100) / 4  # 100 asked, 50 written: 100 * (1 - (100 / 50 - 1) / 2) = 50
    s_q = ((5 + 2 + 4) / 3 - 1) * 25  # every dimension the same
    assert metrics["b/S_l"] == pytest.approx(s_l)
    assert metrics["b/S_q"] == pytest.approx(s_q)
    assert metrics["b/S"] == pytest.approx((s_l + s_q) / 2)
    assert metrics["b/quality/Breadth and Depth"] == pytest.approx(s_q)
    assert metrics["b/0-500/S_q"] == pytest.approx(((5 + 2) / 2 - 1) * 25)
    assert metrics["b/500-2000/S_q"] == pytest.approx(75)  # the unparseable one is left out
    assert (metrics["b/judge_judged"], metrics["b/judge_unparseable"], metrics["b/judge_failed"]) == (3, 1, 0)


def test_ruler_metrics_per_language():
    rows = score_lengths(rows_of((1000, 800), (2000, 900)) + [
        {"id": "z", "prompt": "写", "length": 1000, "response": "字" * 1500, "language": "zh"}])
    metrics = ruler_metrics(rows, "ruler")
    assert metrics["ruler/max_output_words"] == 1500
    assert metrics["ruler/en/max_output_words"] == 900
    assert metrics["ruler/zh/max_output_words"] == 1500
    assert metrics["ruler/median_output_words/1000"] == 1150
    assert metrics["ruler/zh/median_output_words/1000"] == 1500
    assert metrics["ruler/en/n"] == 2
    assert metrics["ruler/zh/S_l"] == pytest.approx(100 * (1 - 0.5 / 3))
