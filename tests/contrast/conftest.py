"""A tiny random pair: two different random inits of one tiny Llama, same tokenizer.

Random init leaves next-token distributions almost uniform (logits ~ 0.1), so every contrast
would be ~0; the output head is scaled up so each model has peaked, different preferences.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from tests.conftest import track
from tests.tiny import tiny_model, tiny_tokenizer


def peaked_checkpoint(seed: int, root: Path, scale: float = 40.0) -> Path:
    out = root / f"peaked-llama-{seed}"
    model = tiny_model("llama", seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pair():
    import workbench as wb

    root = Path(tempfile.mkdtemp(prefix="wb-cge-"))
    base = track(wb.load(peaked_checkpoint(0, root), name="tiny-base"))
    tuned = track(wb.load(peaked_checkpoint(1, root), name="tiny-tuned"))
    return wb.ModelPair(base, tuned)
