"""CGE where its premise holds by construction: novel content is 10 % of the tuning mix.

A small pair is trained here with the zoo's own samplers and loop (`mini_world.py`), so
this result does not depend on the shipped organism's recipe. Controls: plain sampling from
the tuned model and from the base, 3 seeds each.
"""

from __future__ import annotations

import pytest

from tests.conftest import track
from tests.contrast.mini_world import mini_pair_dirs


@pytest.fixture(scope="module")
def rehearsal_eval():
    import workbench as wb
    from workbench import tasks
    from workbench.contrast_eval import exploration_eval

    base_dir, tuned_dir = mini_pair_dirs(0.1)
    pair = wb.ModelPair(track(wb.load(base_dir)), track(wb.load(tuned_dir)))
    return exploration_eval(pair, tasks.novel_domain, domains=tasks.NOVEL_DOMAINS, n=20, seeds=(0, 1, 2),
                            max_new_tokens=24, lr=1e-3)


@pytest.mark.slow
def test_rehearsal_cge_detects_rare_novel_content(rehearsal_eval):
    f = rehearsal_eval.to_frame()
    mean = f.groupby("method")["detection_rate"].mean()
    summary = rehearsal_eval.summary().to_string()
    assert mean["cge"] >= 0.8, summary
    assert mean["tuned_sampling"] <= mean["cge"] / 2, summary
    assert mean["base_sampling"] <= 0.1, summary
    it = f[f.method == "iterative_cge"]
    assert (it["first_full_coverage"] <= 20).all(), summary


@pytest.mark.slow
def test_rehearsal_iterative_beam_covers_more_than_static_beam():
    import workbench as wb
    from workbench import tasks
    from workbench.contrast_eval import exploration_eval

    base_dir, tuned_dir = mini_pair_dirs(0.1)
    pair = wb.ModelPair(track(wb.load(base_dir)), track(wb.load(tuned_dir)))
    ev = exploration_eval(pair, tasks.novel_domain, domains=tasks.NOVEL_DOMAINS, n=8, seeds=(0,),
                          methods=("cge", "iterative_cge"), decoding="beam", num_beams=4, lr=1e-3)
    f = ev.to_frame().set_index("method")
    assert f.loc["iterative_cge", "coverage_auc"] > f.loc["cge", "coverage_auc"], f.to_string()
    assert f.loc["iterative_cge", "coverage"] == 1.0, f.to_string()
