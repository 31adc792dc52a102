"""Routing capture and the per-family routing rules, against HF's own routers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import workbench as wb
from tests.experts.helpers import (
    CASES,
    FAMILIES,
    TEXTS,
    checkpoint,
    deepseek_biased,
    qwen3_moe_model,
    subject,
)
from tests.tiny import tiny_checkpoint, tiny_model
from workbench.engines import routing as R
from workbench.routing import Routing, capture_routing


def _hf(family: str):
    m = qwen3_moe_model() if family == "qwen3_moe" else tiny_model(family)
    return deepseek_biased(m) if family == "deepseek_v3" else m


@pytest.mark.parametrize("family", FAMILIES)
def test_route_is_hf_router_bit_for_bit(family):
    """With nothing switched, `route` reproduces each family's HF router exactly, from its logits."""
    m = _hf(family)
    s = subject(family)
    layer = s.arch.moe_layers[-1]
    gate = m.model.layers[layer].mlp.gate
    x = torch.randn(37, s.arch.d_model, generator=torch.Generator().manual_seed(0))
    logits, w, idx = gate(x)
    sp = R.spec(s, layer) if family != "deepseek_v3" else R.RouterSpec(
        layer, family, "sigmoid", 4, 2, True, 2.5, gate.num_group, gate.topk_group)
    w2, idx2 = R.route(sp, logits, gate)
    assert torch.equal(idx2, idx) and torch.equal(w2, w) and w2.dtype == w.dtype


@pytest.mark.parametrize("family,engine", CASES)
def test_capture_matches_hf_output_router_logits(family, engine):
    """Captured logits equal HF's `output_router_logits`; captured choices follow from them."""
    s = subject(family, engine)
    r = capture_routing(s, TEXTS)
    t = s.tokenize(TEXTS)
    # A plain HF copy: the bridge's wrappers would make HF's output recorder fire more than once.
    plain = AutoModelForCausalLM.from_pretrained(checkpoint(family), attn_implementation="eager").eval()
    if family == "deepseek_v3":
        deepseek_biased(plain)
    out = plain(input_ids=t.input_ids, attention_mask=t.attention_mask,
                     position_ids=wb.engines.base.position_ids(t.attention_mask), output_router_logits=True)
    hf = [x.reshape(len(TEXTS), -1, s.arch.n_experts) for x in out.router_logits]
    assert len(hf) == len(r.layers)
    m = r.attention_mask.bool()
    for li, layer in enumerate(r.layers):
        assert torch.equal(r.logits[li][m], hf[li][m].float())
        w, idx = R.route(R.spec(s, layer), r.logits[li][m], R.router(s, layer))
        assert torch.equal(idx, r.indices[li][m]) and torch.equal(w.float(), r.weights[li][m])
    assert (r.indices[:, ~m] == -1).all() and (r.weights[:, ~m] == 0).all()


def test_engines_agree_and_padding_is_invisible():
    tl, nn = subject("mixtral", "tl"), subject("mixtral", "nnsight")
    a, b = capture_routing(tl, TEXTS), capture_routing(nn, TEXTS, batch_size=1)
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.weights, b.weights)
    single = capture_routing(tl, TEXTS[2:3])
    n = int(single.attention_mask.sum())
    assert torch.equal(single.indices[:, 0, -n:], a.indices[:, 2, -n:])


def test_dense_layers_skipped_and_reported():
    s = subject("deepseek_v3")
    r = capture_routing(s, TEXTS[:2])
    assert r.layers == (1, 2) and r.dense_layers == (0,)
    with pytest.raises(ValueError, match="layer 0 is a dense layer"):
        capture_routing(s, TEXTS[:2], layers=[0])
    with pytest.raises(ValueError, match="out of range"):
        capture_routing(s, TEXTS[:2], layers=[7])


def test_statistics_and_result_roundtrip(tmp_path):
    s = subject("mixtral")
    r = capture_routing(s, TEXTS)
    k = s.arch.top_k
    pp = r.per_prompt("count")
    assert pp.shape == (len(TEXTS), len(r.layers), s.arch.n_experts)
    assert torch.allclose(pp.sum(-1), torch.full(pp.shape[:2], float(k)))  # k experts per token
    assert torch.allclose(r.per_prompt("weight").sum(-1), torch.ones(pp.shape[:2]))  # Mixtral renormalises
    assert torch.allclose(r.frequency().sum(-1), torch.full((len(r.layers),), float(k)))
    frame = r.to_frame()
    assert len(frame) == int(r.attention_mask.sum()) * len(r.layers) * k
    assert r.plot().data
    back = Routing.load(r.save(tmp_path / "r"))
    assert torch.equal(back.indices, r.indices) and back.layers == r.layers


def test_non_moe_model_is_refused():
    s = wb.load(tiny_checkpoint("llama"))
    with pytest.raises(ValueError, match="not a mixture-of-experts"):
        capture_routing(s, TEXTS)
