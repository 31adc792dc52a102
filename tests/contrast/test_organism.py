"""CGE on the shipped base/novel-tuned organisms: the issue's acceptance numbers, 3 seeds.

novel-tuned was fine-tuned on ordinary world text mixed with two domains the base never saw
(an invented language, code); the world's judge `tasks.novel_domain` names the domain a text
shows. Controls: plain sampling from the tuned model (the paper's baseline) and from the base.
"""

from __future__ import annotations

import pytest

from tests.conftest import track

LR = 1e-3  # Adam, one step per example (see the rehearsal in test_rehearsal.py)


@pytest.fixture(scope="module")
def organism_eval():
    from workbench import tasks, zoo
    from workbench.contrast_eval import exploration_eval

    pair = zoo.pair("novel-tuned")
    track(pair.base), track(pair.tuned)
    return exploration_eval(pair, tasks.novel_domain, domains=tasks.NOVEL_DOMAINS, n=20, seeds=(0, 1, 2),
                            max_new_tokens=24, lr=LR)


def _mean(ev, method, col):
    f = ev.to_frame()
    return float(f[f.method == method][col].mean())


@pytest.mark.slow
def test_cge_detects_novel_content_and_plain_sampling_does_not(organism_eval):
    cge = _mean(organism_eval, "cge", "detection_rate")
    tuned = _mean(organism_eval, "tuned_sampling", "detection_rate")
    base = _mean(organism_eval, "base_sampling", "detection_rate")
    summary = organism_eval.summary().to_string()
    assert cge >= 0.8, summary
    assert base <= 0.1, summary  # the judge does not fire on text the fine-tune did not cause
    assert tuned <= cge / 2, summary


@pytest.mark.slow
def test_iterative_cge_covers_every_domain_within_20(organism_eval):
    f = organism_eval.to_frame()
    it = f[f.method == "iterative_cge"]
    assert len(it) == 3 and (it["first_full_coverage"] <= 20).all(), organism_eval.summary().to_string()


@pytest.mark.slow
def test_iterative_cge_covers_more_than_static_at_equal_n(organism_eval):
    """Coverage after k generations, averaged over k = 1..20 and over seeds."""
    it = _mean(organism_eval, "iterative_cge", "coverage_auc")
    st = _mean(organism_eval, "cge", "coverage_auc")
    assert it > st, organism_eval.summary().to_string()
