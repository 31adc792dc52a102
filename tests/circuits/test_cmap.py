"""CMAP on a constructed pair whose only difference is the last layer's attention inputs."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from tests.circuits.helpers import world_llama
from tests.conftest import track
from workbench.circuits import Circuit, entity_batch
from workbench.cmap import CMAPResult, cmap, cmap_layers


@pytest.fixture(scope="module")
def pair(tmp_path_factory, subj):
    """tuned = base with layer 2's q/k/v weights perturbed: only layer-2 heads' z can differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = world_llama(0)
    m = AutoModelForCausalLM.from_pretrained(src)
    torch.manual_seed(1)
    with torch.no_grad():
        for n in ("q_proj", "k_proj", "v_proj"):
            w = getattr(m.model.layers[2].self_attn, n).weight
            w.add_(0.5 * torch.randn_like(w))
    d = tmp_path_factory.mktemp("tuned")
    m.save_pretrained(d)
    AutoTokenizer.from_pretrained(src).save_pretrained(d)
    return wb.ModelPair(subj, track(wb.load(d, name="world-llama-tuned")))


@pytest.fixture(scope="module")
def data(pair, pairs):
    eb = entity_batch(pair.base, pairs[0])
    # Score against the tuned model's own answers: tuned accuracy is 1 by construction.
    ans = pair.tuned.forward(list(eb.prompts))[:, -1].argmax(-1)
    return list(eb.prompts), ans, eb.positions


@pytest.mark.parametrize("variant", ["z", "qkv"])
def test_patching_the_changed_layer_recovers_everything(pair, data, variant):
    prompts, ans, pos = data
    H = pair.base.arch.n_heads
    circ = Circuit(groups={"L2": tuple((2, h) for h in range(H)), "L1": ((1, 0), (1, 1))},
                   positions={"L2": "last", "L1": "last"})
    r = cmap(pair, prompts, ans, circ, pos, variant=variant)
    assert r.tuned_accuracy == 1.0 and r.base_accuracy < 1.0
    df = r.to_frame().set_index("patched")
    assert df.loc["group L2", "accuracy"] == 1.0 and df.loc["full circuit", "recovery"] == pytest.approx(1.0)
    # layer 1 is identical in both models: patching it changes nothing
    assert df.loc["group L1", "accuracy"] == r.base_accuracy and df.loc["group L1", "recovery"] == 0.0


def test_layer_sweep(pair, data):
    prompts, ans, _ = data
    r = cmap_layers(pair, prompts, ans, component="attn_out")
    acc = {n: a for n, _, a in r.rows}
    assert acc["L2.attn_out"] == 1.0 and acc["L0.attn_out"] == acc["L1.attn_out"] == r.base_accuracy
    m = cmap_layers(pair, prompts, ans, component="mlp_out")
    assert dict((n, a) for n, _, a in m.rows)["L0.mlp_out"] == r.base_accuracy


def test_result_roundtrip_and_plot(pair, data, tmp_path):
    prompts, ans, pos = data
    r = cmap(pair, prompts, ans, Circuit(groups={"A": ((2, 0),)}, positions={"A": "last"}), pos)
    r2 = CMAPResult.load(r.save(tmp_path / "r"))
    assert r2 == r and r.plot().data
    assert list(r.to_frame()["patched"])[:2] == ["none (base)", "tuned alone"]


def test_bad_inputs(pair, data, subj):
    prompts, ans, pos = data
    circ = Circuit(groups={"A": ((2, 0),)}, positions={"A": "last"})
    with pytest.raises(ValueError, match="ModelPair"):
        cmap((pair.base, pair.tuned), prompts, ans, circ, pos)
    with pytest.raises(ValueError, match="variant"):
        cmap(pair, prompts, ans, circ, pos, variant="pattern")
    other = wb.load(world_llama(0, layers=2))
    with pytest.raises(ValueError, match="architecture"):
        wb.ModelPair(subj, other)
