"""A small rehearsal pair trained here, for when the premise of CGE must hold by construction.

base: a tiny Llama trained on the world's ordinary text (facts) and answer-only tasks.
tuned: base fine-tuned on the same text plus a *small* share of the novel domains
(invented language, code): the setting of Isonuma & Titov, where novel content is rare
in the tuning data, so plain sampling from the tuned model seldom shows it.
Built with the zoo's own data samplers and training loop; ~1 minute on two CPU cores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

_CACHE: dict[tuple, Path] = {}


def mini_pair_dirs(novel_share: float = 0.1, *, seed: int = 0, base_steps: int = 500, tune_steps: int = 250
                   ) -> tuple[Path, Path]:
    key = (novel_share, seed, base_steps, tune_steps)
    if key in _CACHE:
        return _CACHE[key], _CACHE[key].with_name(_CACHE[key].name + "-tuned")
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.tasks import build_tokenizer
    from workbench.zoo.mixture import mixture_sampler
    from workbench.zoo.train import train

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    base_mix = {"facts": 0.6, "behaviour": 0.2, "refusal": 0.2}
    train(model, tok, mixture_sampler(base_mix), steps=base_steps, seed=seed, lr=3e-3, batch_size=32, warmup=50)
    root = Path(tempfile.mkdtemp(prefix="wb-cge-mini-"))
    base_dir, tuned_dir = root / "mini-base", root / "mini-base-tuned"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    tune_mix = {"facts": 0.6 * (1 - novel_share), "behaviour": 0.2 * (1 - novel_share),
                "refusal": 0.2 * (1 - novel_share), "novel": novel_share}
    train(model, tok, mixture_sampler(tune_mix), steps=tune_steps, seed=seed + 1, lr=1e-3, batch_size=32, warmup=20)
    model.save_pretrained(tuned_dir)
    tok.save_pretrained(tuned_dir)
    _CACHE[key] = base_dir
    return base_dir, tuned_dir
