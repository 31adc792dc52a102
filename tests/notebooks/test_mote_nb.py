"""The MoTE notebook runs top to bottom on the shipped `moe` organism and shows the issue's claims:
top-k fTRI experts off cut held-out refusals by >= 50 % relative with benign accuracy down <= 2
points; k random experts (5 draws) cut less than half as much; forcing the top experts on raises
refusals on benign requests (more than forcing random experts)."""

import re

import pytest

from tests.notebooks.run import execute, outputs_of


@pytest.mark.slow
def test_mote_notebook_executes_and_shows_localised_refusal_experts():
    nb = execute("mote_experts.ipynb", timeout=1800)
    text = "\n".join(outputs_of(nb))
    assert "switched-off experts still selected: []" in text
    m = re.search(r"MOTE_RESULT k=(\d+) refusal ([\d.]+) -> ([\d.]+) cut (-?[\d.]+) \| random cut (-?[\d.]+) "
                  r"\(sd of rate ([\d.]+)\) \| benign ([\d.]+) -> ([\d.]+) drop_pts (-?[\d.]+)", text)
    assert m, text[-3000:]
    k, base, top, cut, rnd_cut, _sd, acc0, acc1, drop = m.groups()
    assert float(cut) >= 0.5, f"top-{k} experts cut refusals by only {float(cut):.0%}"
    assert float(drop) <= 2.0, f"benign accuracy fell {drop} points"
    assert float(rnd_cut) < 0.5 * float(cut), f"random experts cut {rnd_cut} vs top {cut}"
    f = re.search(r"MOTE_FORCE benign refusal ([\d.]+) -> ([\d.]+) \| random forced ([\d.]+)", text)
    assert f, text[-3000:]
    before, forced, rnd_forced = map(float, f.groups())
    assert forced > before and forced > rnd_forced
