"""Turn a recipe's `Arch` into a freshly initialised HF model (Llama or Mixtral)."""

from __future__ import annotations

import torch

from workbench.zoo.recipes import Arch


def make_model(arch: Arch, tokenizer, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    common = dict(
        vocab_size=len(tokenizer), hidden_size=arch.d_model, intermediate_size=arch.d_mlp,
        num_hidden_layers=arch.n_layers, num_attention_heads=arch.n_heads, num_key_value_heads=arch.n_heads,
        max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, initializer_range=0.02,
    )
    torch.manual_seed(seed)
    if arch.family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    cfg = MixtralConfig(**common, num_local_experts=arch.n_experts, num_experts_per_tok=arch.top_k,
                        router_aux_loss_coef=0.0, sliding_window=None)
    return MixtralForCausalLM(cfg)
