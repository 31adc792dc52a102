"""Notebooks are committed with outputs stripped, and every method has one."""

import json

from tests.notebooks.run import NOTEBOOKS


def test_outputs_are_stripped():
    nbs = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert nbs, "no notebooks found"
    for nb in nbs:
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{nb.name}: a code cell has outputs; strip them before committing"
                assert cell.get("execution_count") is None, f"{nb.name}: execution counts not stripped"


def test_one_notebook_per_method():
    names = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    for expected in ("00_quickstart.ipynb", "model_surgery.ipynb", "context_knob.ipynb",
                     "cmap_entity_tracking.ipynb", "novelty_cge.ipynb", "mote_experts.ipynb"):
        assert expected in names, f"missing notebooks/{expected}"
