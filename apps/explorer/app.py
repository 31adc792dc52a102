"""The fine-tuning explorer: how fine-tuning (or an edit) changed a model's internals.

    streamlit run apps/explorer/app.py          # or: workbench app / make app

Seven pages, each driven by the pair and prompt set chosen in the sidebar. Pages are thin: they
call library functions (workbench.diff, probes, edits, ...) through `compute.py` caches.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the repository root.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

# (file, title, icon). Files are `page_*.py`: a page named like a package (`probes.py`, `edits.py`)
# would shadow that package, since Streamlit puts the page's folder on sys.path.
PAGES = [
    ("page_overview.py", "Overview", ":material/grid_on:"),
    ("page_activations.py", "Activations", ":material/stacked_line_chart:"),
    ("page_probes.py", "Probes & knob", ":material/tune:"),
    ("page_circuits.py", "Circuits", ":material/hub:"),
    ("page_novelty.py", "Novelty", ":material/auto_awesome:"),
    ("page_edits.py", "Edits", ":material/build:"),
    ("page_experts.py", "Experts", ":material/account_tree:"),
]

st.set_page_config(page_title="Fine-tuning explorer", layout="wide")
here = Path(__file__).parent
nav = st.navigation([st.Page(str(here / "pages" / p), title=t, icon=i, default=n == 0,
                             url_path=p.removeprefix("page_").removesuffix(".py"))
                     for n, (p, t, i) in enumerate(PAGES)])
nav.run()
