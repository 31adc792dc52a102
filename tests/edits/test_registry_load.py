"""Edit.load works in a fresh process that never imported the edit's module."""

import subprocess
import sys

import torch

from edits.steer import ProjectionSteer
from workbench import Site


def test_load_in_a_fresh_process_finds_the_method(tmp_path):
    edit = ProjectionSteer(site=Site(1, "resid_post"), direction=torch.ones(8) / 8**0.5, value=2.0)
    path = edit.save(tmp_path / "e")
    code = f"from edits.base import Edit; e = Edit.load({str(path)!r}); print(type(e).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ProjectionSteer"
