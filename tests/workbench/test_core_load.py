"""load(): engine choice, remote traces, and a clear error when TransformerLens cannot boot."""

from __future__ import annotations

import pytest

from tests.tiny import tiny_checkpoint
from workbench import load


class _Sent(Exception):
    pass


def test_remote_is_passed_to_every_nnsight_trace(monkeypatch):
    s = load(tiny_checkpoint("llama"), engine="nnsight", remote=True)
    assert s.engine.remote is True and s.engine_name == "nnsight"
    seen = []

    def record(*args, **kw):  # stands in for NDIF: record the call, run nothing
        seen.append(kw.get("remote"))
        raise _Sent

    monkeypatch.setattr(s.engine.model, "trace", record)
    monkeypatch.setattr(s.engine.model, "generate", record)
    with pytest.raises(_Sent):
        s.forward(["the apple"])
    with pytest.raises(_Sent):
        s.generate(["the apple"], max_new_tokens=2)
    assert seen == [True, True]


def test_tl_boot_failure_is_a_clear_error(monkeypatch):
    import workbench.engines.tl as tl

    def broken(*a, **k):
        raise KeyError("Unsupported architecture: OlmoeForCausalLM")

    monkeypatch.setattr(tl, "_boot", broken)
    with pytest.raises(ValueError, match=r"could not boot model family 'olmoe' .*try engine='nnsight'"):
        load(tiny_checkpoint("olmoe"))
    assert load(tiny_checkpoint("olmoe"), engine="nnsight").engine_name == "nnsight"
