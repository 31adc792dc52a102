"""The CGE notebook runs top to bottom on the shipped base/novel-tuned organisms and shows the effect."""

import re

import pytest

from tests.notebooks.run import execute, outputs_of


@pytest.mark.slow
def test_novelty_cge_notebook_executes_and_shows_novel_content():
    nb = execute("novelty_cge.ipynb")
    text = "\n".join(outputs_of(nb))
    m = re.search(r"detection: cge ([\d.]+), iterative_cge ([\d.]+), tuned_sampling ([\d.]+), "
                  r"base_sampling ([\d.]+)", text)
    assert m, text[-2000:]
    cge, iterative, tuned, base = map(float, m.groups())
    # CGE must find novel content far more often than the base model's text does (control)
    # and plain sampling from the tuned model at most half as often (the target).
    assert cge >= 0.8 and cge > base + 0.5 and tuned <= cge / 2
    auc = re.search(r"novelty AUC \(novel vs facts, per-token score\): ([\d.]+)", text)
    assert auc and float(auc.group(1)) > 0.9
    html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any("<span" in o["data"]["text/html"] for o in html), "no highlighted generations shown"
