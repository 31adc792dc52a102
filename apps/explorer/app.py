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

PAGES = [
    ("pages/overview.py", "Overview", ":material/grid_on:"),
    ("pages/activations.py", "Activations", ":material/stacked_line_chart:"),
    ("pages/probes.py", "Probes & knob", ":material/tune:"),
    ("pages/circuits.py", "Circuits", ":material/hub:"),
    ("pages/novelty.py", "Novelty", ":material/auto_awesome:"),
    ("pages/edits.py", "Edits", ":material/build:"),
    ("pages/experts.py", "Experts", ":material/account_tree:"),
]

st.set_page_config(page_title="Fine-tuning explorer", layout="wide")
here = Path(__file__).parent
nav = st.navigation([st.Page(str(here / p), title=t, icon=i, default=n == 0) for n, (p, t, i) in enumerate(PAGES)])
nav.run()
