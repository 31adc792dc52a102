"""Tiny random MoE subjects for the expert tests (every family, both engines where supported)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import workbench as wb
from tests.conftest import track
from tests.tiny import _COMMON, MOE_FAMILIES, tiny_checkpoint, tiny_tokenizer

# Families x engines the expert tests run on. Qwen3-MoE has no nnsight site map yet.
FAMILIES = (*MOE_FAMILIES, "qwen3_moe")
CASES = [(f, e) for f in FAMILIES for e in ("tl", "nnsight") if not (f == "qwen3_moe" and e == "nnsight")]
TEXTS = ["the apple is in box one", "where is paris ? the", "a big red dog", "two cats"]

_SUBJECTS: dict[tuple[str, str], wb.Subject] = {}
_ROOT = tempfile.mkdtemp(prefix="wb-experts-")


def qwen3_moe_model(seed: int = 0):
    import transformers as T

    cfg = T.Qwen3MoeConfig(**_COMMON, head_dim=8, num_experts=4, moe_intermediate_size=24,
                           num_experts_per_tok=2, norm_topk_prob=True)
    torch.manual_seed(seed)
    m = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for _, p in m.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def deepseek_biased(model):
    """Non-trivial DeepSeek routing: correction bias, renormalisation and a scaling factor."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if "e_score_correction_bias" in m._buffers:  # the HF router itself, not a wrapper
            m.e_score_correction_bias.copy_(0.3 * torch.randn(m.e_score_correction_bias.shape, generator=g))
            m.norm_topk_prob, m.routed_scaling_factor = True, 2.5
    return model


def checkpoint(family: str) -> Path:
    if family != "qwen3_moe":
        return tiny_checkpoint(family)
    out = Path(_ROOT) / family
    if not (out / "config.json").exists():
        qwen3_moe_model().save_pretrained(out)
        tiny_tokenizer().save_pretrained(out)
    return out


def subject(family: str, engine: str = "tl") -> wb.Subject:
    key = (family, engine)
    if key not in _SUBJECTS:
        s = wb.load(checkpoint(family), engine=engine)
        if family == "deepseek_v3":
            with torch.no_grad():
                deepseek_biased(s.hf_model)
        _SUBJECTS[key] = track(s)
    return _SUBJECTS[key]
