"""The MoTE notebook runs top to bottom on the shipped `moe` organism.

What holds is asserted: a switched-off expert is never selected, and the notebook prints its
k-curve, random-expert control and forcing results. The issue's effect claims (top-k fTRI
experts off cut held-out refusals by >= 50 % with benign accuracy down <= 2 points, random
experts less than half as much) hold on this organism, whose refusal was planted in a few experts;
fTRI's chosen experts must be among the planted ones. Forcing the top experts on does NOT raise
benign refusals here (the planted expert learnt a conditional rule): a strict expected failure.
"""

import re

import pytest

from tests.notebooks.run import execute, outputs_of

REASON = ("measured 0.00 -> 0.00 (random 0.00): the planted refusal expert is conditional (the router sends it 38 % of benign-"
          "request tokens too), so forcing it on benign requests changes nothing")


@pytest.fixture(scope="module")
def text():
    return "\n".join(outputs_of(execute("mote_experts.ipynb", timeout=1800)))


def _result(text):
    m = re.search(r"MOTE_RESULT k=(\d+) refusal ([\d.]+) -> ([\d.]+) cut (-?[\d.]+) \| random cut (-?[\d.]+) "
                  r"\(sd of rate ([\d.]+)\) \| benign ([\d.]+) -> ([\d.]+) drop_pts (-?[\d.]+)", text)
    assert m, text[-3000:]
    return m.groups()


@pytest.mark.slow
def test_mote_notebook_executes_and_switch_is_exact(text):
    assert "switched-off experts still selected: []" in text
    _result(text)
    assert re.search(r"MOTE_FORCE benign refusal ([\d.]+) -> ([\d.]+) \| random forced ([\d.]+)", text)


@pytest.mark.slow
def test_top_experts_off_cut_refusals_and_keep_benign_accuracy(text):
    k, base, top, cut, rnd_cut, _sd, acc0, acc1, drop = _result(text)
    assert float(cut) >= 0.5 and float(drop) <= 2.0 and float(rnd_cut) < 0.5 * float(cut)
    m = re.search(r"MOTE_PLANTED top-(\d+) fTRI experts .*: (\d+) of (\d+) planted", text)
    assert m and int(m[2]) >= 1, text[-2000:]  # what fTRI found is (partly) the planted ground truth


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=REASON)
def test_forcing_top_experts_raises_benign_refusals(text):
    f = re.search(r"MOTE_FORCE benign refusal ([\d.]+) -> ([\d.]+) \| random forced ([\d.]+)", text)
    before, forced, rnd_forced = map(float, f.groups())
    assert forced > before and forced > rnd_forced
