"""The quickstart notebook runs top to bottom on the shipped `base` organism."""

import re

import pytest

from tests.notebooks.run import execute, outputs_of


@pytest.mark.slow
def test_quickstart_executes_and_shows_an_effect():
    nb = execute("00_quickstart.ipynb")
    text = "\n".join(outputs_of(nb))
    assert "ValueError: site L99.resid_post" in text
    m = re.search(r"plain ([\d.]+), \+direction ([\d.]+), \+random ([\d.]+)", text)
    assert m, text[-2000:]
    plain, direction, random_ = map(float, m.groups())
    assert direction > plain and direction > random_
