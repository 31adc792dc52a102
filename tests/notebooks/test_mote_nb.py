"""The MoTE notebook runs top to bottom on the shipped `moe` organism.

What holds is asserted: a switched-off expert is never selected, and the notebook prints its
k-curve, random-expert control and forcing results. The issue's effect claims (top-k fTRI
experts off cut held-out refusals by >= 50 % with benign accuracy down <= 2 points, random
experts less than half as much, forcing raises benign refusals) do NOT hold on this organism:
its refusal is redundant across experts (measured: top-1..6 off leaves refusal at 1.00; only
switching off layer 0's near-universal expert removes it, with benign accuracy collapsing).
They are strict expected failures, so they turn into required passes once the organism
carries refusal in a few experts.
"""

import re

import pytest

from tests.notebooks.run import execute, outputs_of

REASON = ("moe organism: refusal is not localised in experts (top-1..6 off: refusal stays 1.00); "
          "see the issue note for the recipe change")


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
@pytest.mark.xfail(strict=True, reason=REASON)
def test_top_experts_off_cut_refusals_and_keep_benign_accuracy(text):
    k, base, top, cut, rnd_cut, _sd, acc0, acc1, drop = _result(text)
    assert float(cut) >= 0.5 and float(drop) <= 2.0 and float(rnd_cut) < 0.5 * float(cut)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=REASON)
def test_forcing_top_experts_raises_benign_refusals(text):
    f = re.search(r"MOTE_FORCE benign refusal ([\d.]+) -> ([\d.]+) \| random forced ([\d.]+)", text)
    before, forced, rnd_forced = map(float, f.groups())
    assert forced > before and forced > rnd_forced
