"""Diffs on the shipped organisms (entity-tuned vs base): what DARE and Graft say about a real fine-tune.

Measured (200 held-out episodes, seeds 0-2): entity accuracy base 0.56 -> tuned 1.00; DARE with
p = 0.9 rescaled keeps the whole gain (1.00 every seed) while dropping without rescaling keeps 34 %;
p = 0.99 rescaled collapses (the delta is ~20 % of the weights, too large to rescale 100x).
Graft: the top 10 % entries by |delta| recover 67 % of the gain, random 10 % recover 36 +- 2 %;
at 1 % neither recovers more than ~5 %: this fine-tune is not localised in a tiny subset.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def entity():
    from tests.tiny import guard_track
    from workbench import tasks, zoo
    from workbench.tasks.evaluate import entity_accuracy

    pair = zoo.pair("entity-tuned")
    guard_track(pair.base)
    guard_track(pair.tuned)
    ex = tasks.entity_tracking(120, seed=0, split="eval")
    return pair, (lambda s: entity_accuracy(s, ex)["accuracy"])


def test_dare_rescaled_keeps_the_gain_and_the_control_does_not(entity):
    from workbench.diff import dare_check

    pair, metric = entity
    res = dare_check(pair, metric, ps=(0.9,), seeds=(0, 1, 2), progress=False)
    assert res.tuned_metric - res.base_metric > 0.3  # the fine-tune's gain exists on these episodes
    f = res.frame
    kept = f[f.variant == "rescaled"]["recovered"]
    control = f[f.variant == "no_rescale"]["recovered"]
    assert (kept > 0.9).all(), kept.tolist()
    assert kept.mean() > control.mean() + 0.3, (kept.mean(), control.mean())


def test_graft_top_entries_beat_random_entries(entity):
    from edits.graft import graft_curve

    pair, metric = entity
    curve = graft_curve(pair, metric, fractions=(0.1,), seeds=(0, 1, 2))
    s = curve.summary().set_index(["selection", "fraction"])["mean"]
    rnd = curve.frame[curve.frame.selection == "random"]["recovered"]
    assert s[("top", 0.1)] > rnd.max() + 0.15, (s[("top", 0.1)], rnd.tolist())


def test_weight_diff_of_the_fine_tune_is_dense_and_full_rank(entity):
    from workbench.diff import weight_diff

    pair, _ = entity
    wd = weight_diff(pair, progress=False)
    assert wd.n_changed == len(wd.frame)  # full fine-tune: every tensor moved
    mats = wd.frame[wd.frame["eff_rank"].notna()]
    # Effective rank of each matrix delta is far above 1: not a low-rank (LoRA-like) update.
    assert (mats["eff_rank"] > 10).all()
    # Only mildly more concentrated than a dense Gaussian delta of the same per-tensor scale.
    assert wd.global_share[-1] < 2 * wd.control_share[-1]
