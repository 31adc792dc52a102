"""The Model Surgery notebook runs top to bottom on the shipped `base` organism.

Its own cells assert the issue's claims (best probe layer >= 0.9 held out; >= 70 % relative cut of
held-out toxic continuations; fact recall and entity tracking down <= 2 points; random rows clearly
less; negative alpha raises), so executing it is the test; here we also read the summary line back.
"""

import re

import pytest

from tests.notebooks.run import execute, outputs_of


@pytest.mark.slow
def test_model_surgery_notebook_shows_the_effect_against_controls():
    nb = execute("model_surgery.ipynb", timeout=1800)
    text = "\n".join(outputs_of(nb))
    m = re.search(r"surgery: -(\d+)% toxic; random rows: -?(-?\d+)% .*negative alpha: ([\d.]+) -> ([\d.]+)", text)
    assert m, text[-2000:]
    surgery, random_, before, negative = int(m[1]), int(m[2]), float(m[3]), float(m[4])
    assert surgery >= 70 and random_ < surgery and negative > before
    assert "max |logit difference|, weight edit vs activation edit" in text
