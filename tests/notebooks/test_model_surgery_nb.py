"""The Model Surgery notebook runs top to bottom on the shipped `base` organism.

Its cells assert the issue's claims (best probe layer >= 0.9 held out; >= 70 % relative cut of
held-out toxic continuations; random rows clearly less; negative alpha raises) and print the
capability cost, which we read back here: fact recall and entity tracking (3,000 held-out episodes)
must each drop <= 2 points with the probe layer, K and alpha chosen on validation.
"""

import re

import pytest

from tests.notebooks.run import execute, outputs_of


@pytest.fixture(scope="module")
def text():
    nb = execute("model_surgery.ipynb", timeout=1800)
    return "\n".join(outputs_of(nb))


def _drops(text):
    m = re.search(r"capability drop: facts ([\d.-]+) points, entity tracking ([\d.-]+) points", text)
    assert m, text[-2000:]
    return float(m[1]), float(m[2])


@pytest.mark.slow
def test_model_surgery_notebook_shows_the_effect_against_controls(text):
    m = re.search(r"surgery: -(\d+)% toxic; random rows: -?(-?\d+)% .*negative alpha: ([\d.]+) -> ([\d.]+)", text)
    assert m, text[-2000:]
    surgery, random_, before, negative = int(m[1]), int(m[2]), float(m[3]), float(m[4])
    assert surgery >= 70 and random_ < surgery and negative > before
    assert _drops(text)[0] <= 2
    assert "max |logit difference|, weight edit vs activation edit" in text


@pytest.mark.slow
def test_model_surgery_keeps_entity_tracking_within_two_points(text):
    assert _drops(text)[1] <= 2


@pytest.mark.slow
def test_model_surgery_holds_across_probe_seeds(text):
    m = re.search(r"probe seeds: reduction min ([\d.-]+), fact drop max ([\d.-]+), entity drop max ([\d.-]+)", text)
    assert m, text[-2000:]
    assert float(m[1]) >= 0.7 and float(m[2]) <= 2 and float(m[3]) <= 2
