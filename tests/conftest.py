"""Shared fixtures. The autouse guard fails any test that leaves a hook registered or a
weight changed on a shared model (`workbench` hooks exist only inside `with` blocks)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread per process: pytest-xdist runs one worker per core, and on a shared 2-core machine
# two threads per worker oversubscribe it badly.
torch.set_num_threads(1)

_TRACKED: list = []  # Subjects created through the `track` helper below


def track(subject):
    """Register a Subject so the guard checks it for leftover hooks and changed weights."""
    _TRACKED.append(subject)
    return subject


def _hook_count(model: torch.nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
        n += len(getattr(m, "fwd_hooks", []) or []) + len(getattr(m, "bwd_hooks", []) or [])
    return n


@pytest.fixture(autouse=True)
def no_leftover_hooks_or_weight_changes():
    before = [(s, _hook_count(s.hf_model), s.params.snapshot(), list(s._stack)) for s in _TRACKED]
    yield
    for s, hooks, weights, stack in before:
        assert _hook_count(s.hf_model) == hooks, f"{s.name}: a test left a hook registered"
        assert list(s._stack) == stack, f"{s.name}: a test left an intervention active"
        for k, v in s.params.items():
            assert torch.equal(v.detach(), weights[k]), f"{s.name}: a test changed weight {k}"
