"""The CMAP notebook runs top to bottom on the base / entity-tuned organisms and shows its tables."""

import re

import pytest

from tests.notebooks.run import execute, outputs_of


@pytest.mark.slow
def test_cmap_notebook_executes_and_reports():
    nb = execute("cmap_entity_tracking.ipynb", timeout=1800)
    text = "\n".join(outputs_of(nb))
    m = re.search(r"attribution vs exact Spearman (-?[\d.]+)", text)
    assert m, text[-2000:]
    assert -1 <= float(m.group(1)) <= 1
    for needle in ("faithfulness", "group A", "full circuit", "tuned alone", "recovery (qkv)", "desideratum"):
        assert needle in text, f"notebook output lacks {needle!r}"
