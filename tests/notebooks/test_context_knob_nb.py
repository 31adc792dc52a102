"""The context-knob notebook runs top to bottom on the organisms and shows the search, the
projection distributions and the steering table, with the effect against its controls."""

import re

import pytest

from tests.notebooks.run import execute, outputs_of


@pytest.mark.slow
def test_context_knob_notebook_executes_and_shows_the_knob():
    nb = execute("context_knob.ipynb", timeout=1800)
    text = "\n".join(outputs_of(nb))
    assert re.search(r"range \[[\d, ]+\] \(B=\d+, U=\d+", text), text[-2000:]
    rows = dict(re.findall(r"^([\w-]+): (with intent .*)$", text, flags=re.M))
    assert {"intent-tuned", "base", "entity-tuned"} <= set(rows), text[-2000:]

    def nums(name):
        m = re.match(r"with intent ([\d.]+) \| no intent ([\d.]+) \| DAS ([\d.]+) \| diff-means ([\d.]+) \| "
                     r"random ([\d.]+) \+- ([\d.na]+)", rows[name])
        assert m, rows[name]
        return [float(x) for x in m.groups()]

    own, bare, das, _, rand, _ = nums("intent-tuned")
    assert das >= 0.8 and rand <= bare + 0.1
    b_own, b_bare, b_das, _, b_rand, _ = nums("base")
    # transfer: the intent-tuned direction steers base clearly past its own PairAcc and random directions
    assert b_das >= b_own + 0.2 and b_das >= b_rand + 0.2 and b_rand <= b_bare + 0.1
    figs = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figs) >= 4, "search, projections, steering table and separation figures expected"
    assert re.search(r"Spearman -?[\d.]+", text)
