"""Interventions and Sites are values; Activations round-trip through RAM, a store and disk;
and the autouse guard really catches a leaked hook, intervention or weight change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny import tiny_subject
from workbench import Ablate, Activations, Add, Patch, SetProjection, Site
from workbench.interventions import from_json

S = Site(1, "resid_post")


def _examples():
    g = torch.Generator().manual_seed(0)
    return [
        Patch(Site(0, "z", head=2), torch.randn(1, 3, 8, generator=g), positions=[0, 2]),
        Add(S, torch.randn(32, generator=g), positions=-1),
        SetProjection(S, torch.randn(32, generator=g), 2.5),
        Ablate(Site(0, "mlp_out")),
        Ablate(Site(0, "attn_out"), mode="mean", mean=torch.randn(32, generator=g), positions=(1, 2)),
    ]


@pytest.mark.parametrize("iv", _examples(), ids=lambda iv: type(iv).__name__)
def test_intervention_json_round_trip(iv):
    back = from_json(json.loads(iv.dumps()))
    assert back == iv and hash(back) == hash(iv)
    assert type(back) is type(iv)


def test_interventions_print_and_compare():
    v = torch.zeros(32)
    assert repr(Add(S, v)) == "Add(site=L1.resid_post, vector=tensor(32,), positions=None)"
    assert Add(S, v) == Add(S, v.clone())
    assert Add(S, v) != Add(S, v + 1)
    assert Add(S, v) != Add(S, v, positions=-1)
    assert Add(S, v) != Patch(S, v)
    assert len({Add(S, v), Add(S, v.clone())}) == 1
    with pytest.raises(Exception, match="cannot assign"):
        Add(S, v).site = Site(0, "resid_pre")  # frozen


def test_sites_are_values():
    for s in (Site(0, "resid_pre"), Site(3, "z", head=1), Site(2, "router_logits")):
        assert Site.parse(str(s)) == s and Site.from_json(s.to_json()) == s
    assert sorted([Site(1, "z"), Site(0, "resid_post")])[0] == Site(0, "resid_post")
    assert Site(0, "mlp_out").key() > Site(0, "attn_out").key()
    with pytest.raises(ValueError, match="only 'z' and 'pattern' have heads"):
        Site(0, "resid_post", head=1)
    with pytest.raises(ValueError, match="Site.layer: expected a non-negative int"):
        Site(-1, "resid_post")
    with pytest.raises(ValueError, match="Site.parse: expected"):
        Site.parse("resid_post")


@pytest.mark.parametrize("engine", ["tl", "nnsight"])
@pytest.mark.parametrize("positions", [None, -1])
def test_capture_to_store_equals_ram(engine, positions, tmp_path):
    s = tiny_subject("llama", engine)
    texts = ["the apple is in box", "where is paris ?", "a big red dog is on the house", "one two"]
    sites = [Site(0, "resid_post"), Site(1, "z", head=2), Site(1, "pattern"), Site(1, "mlp_post")]
    ram = s.capture(texts, sites, positions=positions, batch_size=3)
    disk = s.capture(texts, sites, positions=positions, batch_size=3, store=str(tmp_path / "store"))
    assert disk.path is not None and Path(disk.path).is_dir()
    assert torch.equal(ram.attention_mask, disk.attention_mask)
    for x in sites:
        assert torch.equal(ram[x], torch.as_tensor(disk[x])), x
    again = Activations.load(tmp_path / "store")
    assert torch.equal(torch.as_tensor(again[sites[0]]), ram[sites[0]])
    saved = Activations.load(ram.save(tmp_path / "saved"))
    for x in sites:
        assert torch.equal(saved[x], ram[x])
    assert saved.positions == ram.positions


# --- the guard --------------------------------------------------------------------------
def _guard(request):
    """The guard fixture's own generator, from the conftest module pytest loaded."""
    mods = [p for p in request.config.pluginmanager.get_plugins()
            if str(getattr(p, "__file__", "")).endswith("tests/conftest.py")]
    assert len(mods) == 1
    fn = mods[0].no_leftover_hooks_or_weight_changes
    return getattr(fn, "__wrapped__", fn)()


def test_guard_detects_a_leaked_hook(request):
    s = tiny_subject("llama")  # tracked
    gen = _guard(request)
    next(gen)
    handle = s.hf_model.model.layers[0].register_forward_hook(lambda *a: None)
    try:
        with pytest.raises(AssertionError, match="left a hook registered"):
            next(gen)
    finally:
        handle.remove()


def test_guard_detects_a_changed_weight_and_an_active_intervention(request):
    s = tiny_subject("llama")
    w = s.params.gate(0)
    gen = _guard(request)
    next(gen)
    old = w[0, 0].item()
    w[0, 0] = old + 1.0
    try:
        with pytest.raises(AssertionError, match="changed weight model.layers.0.mlp.gate_proj.weight"):
            next(gen)
    finally:
        w[0, 0] = old  # the exact float32 value back (x + 1 - 1 is not always x)
    gen = _guard(request)
    next(gen)
    cm = s.intervene(Add(S, torch.zeros(32)))
    cm.__enter__()
    try:
        with pytest.raises(AssertionError, match="left an intervention active"):
            next(gen)
    finally:
        cm.__exit__(None, None, None)


def test_track_imported_from_tests_conftest_feeds_the_guard(request):
    import tests.conftest as imported

    mods = [p for p in request.config.pluginmanager.get_plugins()
            if str(getattr(p, "__file__", "")).endswith("tests/conftest.py")]
    assert imported in mods


def test_deepcopy_of_a_subject_is_independent():
    import copy

    import torch

    from tests.tiny import tiny_checkpoint
    from workbench import load

    s = load(tiny_checkpoint("llama"))
    twin = copy.deepcopy(s)
    t = s.tokenize(["the big dog"])
    with torch.no_grad():
        before = s.forward(t)
        next(iter(dict(twin.params.items()).values())).data.mul_(0)  # wreck the copy's embeddings
        assert torch.equal(s.forward(t), before)
        assert not torch.equal(twin.forward(t), before)
