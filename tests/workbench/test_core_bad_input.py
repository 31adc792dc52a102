"""Bad input is a clear ValueError / FileNotFoundError naming the argument; nothing is modified.

The autouse guard (tests/conftest.py) also checks, after each test, that no hook, active
intervention or changed weight was left behind on the shared Subjects used here.
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny import guard_track, tiny_checkpoint, tiny_subject
from workbench import Add, Patch, Site, load

ENGINES = pytest.mark.parametrize("engine", ["tl", "nnsight"])


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load(tmp_path / "empty")


def test_missing_adapter_and_home_relative_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="adapter: no adapter directory"):
        load(tiny_checkpoint("llama"), adapter=tmp_path / "no-adapter")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"no checkpoint directory at '{tmp_path}/ckpt'"):
        load("~/ckpt")


def test_pickle_only_checkpoint_needs_trust_pickle(tmp_path):
    path = tiny_checkpoint("llama", tmp_path / "pkl", pickle=True)
    assert not list(path.glob("*.safetensors")) and list(path.glob("*.bin"))
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load(path)
    s = guard_track(load(path, trust_pickle=True))
    ref = tiny_subject("llama")
    assert torch.equal(s.forward(["the apple is in box"]), ref.forward(["the apple is in box"]))


def test_bad_load_arguments():
    path = tiny_checkpoint("llama")
    with pytest.raises(ValueError, match="engine: expected 'tl' or 'nnsight'"):
        load(path, engine="jax")
    with pytest.raises(ValueError, match="remote=True runs on NDIF through nnsight"):
        load(path, remote=True)
    with pytest.raises(ValueError, match="dtype: expected a torch.dtype"):
        load(path, dtype="float32")


@ENGINES
def test_empty_and_ragged_inputs(engine):
    s = tiny_subject("llama", engine)
    for call in (lambda: s.forward([]), lambda: s.capture([], [Site(0, "resid_post")]), lambda: s.tokenize([]),
                 lambda: s.generate([], max_new_tokens=2)):
        with pytest.raises(ValueError, match="(texts|inputs): expected at least one"):
            call()
    with pytest.raises(ValueError, match=r"sequences of different lengths \[2, 3\] without padding"):
        s.forward([[1, 4, 9], [1, 4]])
    with pytest.raises(ValueError, match="batch_size: expected >= 1"):
        s.capture(["the apple"], [Site(0, "resid_post")], batch_size=0)


@ENGINES
def test_nan_vector_is_refused_and_nothing_changes(engine):
    s = tiny_subject("llama", engine)
    base = s.forward(["the apple is in box"])
    v = torch.zeros(s.arch.d_model)
    v[3] = float("nan")
    with pytest.raises(ValueError, match="Add.vector: contains NaN"):
        Add(Site(0, "resid_post"), v)
    assert s.active == ()
    assert torch.equal(s.forward(["the apple is in box"]), base)


@ENGINES
def test_bad_sites_list_what_is_valid(engine):
    s = tiny_subject("llama", engine)
    with pytest.raises(ValueError, match=r"unknown 'resid'; expected one of \['resid_pre'"):
        Site(0, "resid")
    with pytest.raises(ValueError, match=r"layer 2 out of range; valid 0\.\.1"):
        s.check_site(Site(2, "resid_post"))
    with pytest.raises(ValueError, match=r"head 4 out of range; valid 0\.\.3"):
        s.check_site(Site(0, "z", head=4))
    with pytest.raises(ValueError, match=r"no 'router_logits' at layer 0; valid components there: \['resid_pre'"):
        s.check_site(Site(0, "router_logits"))
    neox = tiny_subject("gpt_neox", engine)  # parallel residual: no point between attention and MLP
    with pytest.raises(ValueError, match=r"no 'resid_mid' .*valid components there: .*'attn_out'"):
        neox.check_site(Site(0, "resid_mid"))
    moe = tiny_subject("mixtral", engine)
    with pytest.raises(ValueError, match=r"no 'mlp_post' .*'router_logits'"):
        moe.check_site(Site(0, "mlp_post"))
    with pytest.raises(ValueError, match="layer 9 out of range"), s.intervene(Add(Site(9, "resid_post"), torch.zeros(32))):
        pass
    assert s.active == ()


@ENGINES
def test_shape_mismatch_shows_both_shapes(engine):
    s = tiny_subject("llama", engine)
    with s.intervene(Patch(Site(0, "resid_post"), torch.zeros(1, 3, 7))):
        with pytest.raises(ValueError, match=r"values have shape \(1, 3, 7\) but the patched activation has shape \(1, 6, 32\)"):
            s.forward(["the apple is in box"])
    with s.intervene(Add(Site(0, "z"), torch.zeros(5))):
        with pytest.raises(ValueError, match=r"vector has shape \(5,\).*activation shape \(1, 6, 4, 8\)"):
            s.forward(["the apple is in box"])


@ENGINES
def test_read_only_sites_refuse_writes(engine):
    moe = tiny_subject("mixtral", engine)
    with moe.intervene(Add(Site(0, "router_logits"), torch.ones(4))):
        with pytest.raises(ValueError, match="router_logits are read-only"):
            moe.forward(["the apple"])
    s = tiny_subject("llama", engine)
    iv = Add(Site(0, "pattern"), torch.zeros(1))
    if engine == "nnsight":
        with s.intervene(iv), pytest.raises(ValueError, match="can read 'pattern' but not write it"):
            s.forward(["the apple"])
    else:  # the bridge recomputes attention itself, so a pattern write takes effect there
        base = s.forward(["the apple"])
        with s.intervene(Patch(Site(0, "pattern", head=0), torch.zeros(1, 3, 3), positions=None)):
            assert not torch.equal(s.forward(["the apple"]), base)
