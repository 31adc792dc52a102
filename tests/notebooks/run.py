"""Execute a notebook top to bottom with nbclient (the same kernel the venv has)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def execute(name: str, timeout: int = 900):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def outputs_of(nb) -> list[str]:
    """The text of every output, for asserting on what a notebook showed."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if "text" in o:
                out.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                out.append(o["data"]["text/plain"])
    return out
