"""Exploration evaluation: metric helpers by hand, and the full loop on a tiny random pair."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.contrast_eval import (
    ExplorationEval,
    coverage,
    coverage_auc,
    detection_rate,
    exploration_eval,
    first_full_coverage,
    judge_labels,
)


def test_metric_helpers():
    labels = [None, "a", "a", None, "b"]
    assert detection_rate(labels) == 0.6
    assert coverage(labels, ["a", "b", "c"]) == pytest.approx(2 / 3)
    assert coverage(labels, ["a", "b"]) == 1.0
    assert first_full_coverage(labels, ["a", "b"]) == 5
    assert math.isnan(first_full_coverage(labels, ["a", "c"]))
    # after k = 1..5: 0, .5, .5, .5, 1
    assert coverage_auc(labels, ["a", "b"]) == pytest.approx((0 + 0.5 + 0.5 + 0.5 + 1) / 5)
    assert judge_labels(lambda t: len(t) > 2, ["ab", "abc"]) == [None, True]
    assert judge_labels(lambda t: t or None, ["", "x"]) == [None, "x"]


def test_exploration_eval_runs_every_method(pair, tmp_path):
    judge = lambda t: ("animals" if any(w in t.split() for w in ("cat", "dog")) else  # noqa: E731
                       "numbers" if any(w in t.split() for w in ("one", "two", "three")) else None)
    ev = exploration_eval(pair, judge, domains=["animals", "numbers"], n=3, seeds=(0, 1), max_new_tokens=6)
    assert isinstance(ev, ExplorationEval)
    f = ev.to_frame()
    assert len(f) == 4 * 2 and set(f["method"]) == {"cge", "iterative_cge", "tuned_sampling", "base_sampling"}
    assert len(ev.generations) == 4 * 2 * 3
    # the frame's numbers are the helpers applied to the judged generations
    for (m, s), g in ev.generations.groupby(["method", "seed"]):
        row = f[(f.method == m) & (f.seed == s)].iloc[0]
        labs = [x if isinstance(x, str) else None for x in g.sort_values("index")["label"]]
        assert row.detection_rate == detection_rate(labs)
        assert row.coverage == coverage(labs, ["animals", "numbers"])
    assert set(ev.summary()["method"]) == set(f["method"])
    assert len(ev.coverage_at(2)) == 8
    ev.plot()
    ev2 = ExplorationEval.load(ev.save(tmp_path / "ev"))
    pd.testing.assert_frame_equal(ev2.frame.reset_index(drop=True), f.reset_index(drop=True), check_dtype=False)


def test_exploration_eval_bad_input(pair):
    with pytest.raises(ValueError, match="methods"):
        exploration_eval(pair, lambda t: None, domains=["a"], methods=["nope"])
    with pytest.raises(ValueError, match="judge"):
        exploration_eval(pair, "novel_domain", domains=["a"])
    with pytest.raises(ValueError, match="n: expected"):
        exploration_eval(pair, lambda t: None, domains=["a"], n=0)
    with pytest.raises(ValueError, match="seeds"):
        exploration_eval(pair, lambda t: None, domains=["a"], seeds=[])
