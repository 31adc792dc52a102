"""Tiny random Llamas that speak the world's tokenizer, so entity-tracking prompts tokenize as
they do for the organisms (the organisms themselves are used where a test needs the phenomenon)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

_CACHE: dict[tuple, Path] = {}


def world_llama(seed: int = 0, *, layers: int = 3, heads: int = 4, kv_heads: int | None = None,
                d_model: int = 32) -> Path:
    """A random Llama checkpoint with `workbench.tasks.build_tokenizer()`; cached per process."""
    key = (seed, layers, heads, kv_heads, d_model)
    if key in _CACHE:
        return _CACHE[key]
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.tasks import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads or heads, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms, so a misplaced norm shows up numerically
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    d = Path(tempfile.mkdtemp(prefix="wb-world-llama-"))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    _CACHE[key] = d
    return d


def entity_pairs(n: int, n_objects: int, seed: int = 0, split: str = "eval"):
    """`n` entity-tracking examples and `n` fresh episodes of the same size as their corruptions."""
    from workbench.tasks import entity_tracking

    clean = entity_tracking(n, seed=seed, split=split, n_objects=n_objects)
    corrupt = entity_tracking(n, seed=seed + 1000, split=split, n_objects=n_objects)
    return clean, corrupt
