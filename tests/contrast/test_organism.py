"""CGE on the shipped base/novel-tuned organisms: the issue's acceptance numbers, 3 seeds.

novel-tuned was fine-tuned on ordinary world text with two domains the base never saw (an
invented language, code) as 10 % of the mix; the world's judge `tasks.novel_domain` names the domain a text
shows. Controls: plain sampling from the tuned model (the paper's baseline) and from the base.
"""

from __future__ import annotations

import pytest

from tests.conftest import track

LR = 1e-3  # Adam, one step per example (see the rehearsal in test_rehearsal.py)


@pytest.fixture(scope="module")
def organism_pair():
    from workbench import zoo

    pair = zoo.pair("novel-tuned")
    track(pair.base), track(pair.tuned)
    return pair


@pytest.fixture(scope="module")
def organism_eval(organism_pair):
    """Sampling: every method, 20 generations x 3 seeds."""
    from workbench import tasks
    from workbench.contrast_eval import exploration_eval

    return exploration_eval(organism_pair, tasks.novel_domain, domains=tasks.NOVEL_DOMAINS, n=20,
                            seeds=(0, 1, 2), max_new_tokens=24, lr=LR)


@pytest.fixture(scope="module")
def beam_eval(organism_pair):
    """Beam search (the paper's decoding): static = the 20 best of one 20-beam search, iterative =
    the best of 4 beams, 20 times. Beam search is deterministic, so one seed says it all."""
    from workbench import tasks
    from workbench.contrast_eval import exploration_eval

    return exploration_eval(organism_pair, tasks.novel_domain, domains=tasks.NOVEL_DOMAINS, n=20, seeds=(0,),
                            methods=("cge", "iterative_cge"), decoding="beam", num_beams=4, max_new_tokens=24,
                            lr=LR)


def _mean(ev, method, col):
    f = ev.to_frame()
    return float(f[f.method == method][col].mean())


@pytest.mark.slow
def test_cge_detects_novel_content(organism_eval):
    cge = _mean(organism_eval, "cge", "detection_rate")
    base = _mean(organism_eval, "base_sampling", "detection_rate")
    summary = organism_eval.summary().to_string()
    assert cge >= 0.8, summary
    assert base <= 0.1, summary  # the judge does not fire on text the fine-tune did not cause


@pytest.mark.slow
def test_plain_sampling_detects_at_most_half_as_often_as_cge(organism_eval):
    cge = _mean(organism_eval, "cge", "detection_rate")
    tuned = _mean(organism_eval, "tuned_sampling", "detection_rate")
    assert tuned <= cge / 2, organism_eval.summary().to_string()


@pytest.mark.slow
def test_iterative_cge_covers_every_domain_within_20(organism_eval, beam_eval):
    for ev, seeds in ((organism_eval, 3), (beam_eval, 1)):
        f = ev.to_frame()
        it = f[f.method == "iterative_cge"]
        assert len(it) == seeds and (it["first_full_coverage"] <= 20).all(), ev.summary().to_string()


@pytest.mark.slow
def test_iterative_cge_covers_more_than_static_at_equal_n(beam_eval):
    """Coverage after k generations, averaged over k = 1..20 (beam search: static CGE's n best
    hypotheses share a prefix, iterative CGE's base copy has learnt what was shown)."""
    it = _mean(beam_eval, "iterative_cge", "coverage_auc")
    st = _mean(beam_eval, "cge", "coverage_auc")
    assert it > st, beam_eval.summary().to_string()
