"""Capture: all resid_post sites over many prompts vs the plain HF forward with
`output_hidden_states=True` (both write into preallocated `N pos d_model` tensors per layer)."""

from __future__ import annotations

import torch
from common import QUICK, interleaved, large_llama, organism, random_texts, row

import workbench as wb


def _hf_capture(subject, model, texts, batch_size: int, hidden: bool = True):
    """The baseline: a plain HF model (no bridge), same batching, same output layout.
    `hidden=False` is the bare forward pass: the floor any capture pays."""
    toks = subject.tokenize(texts)
    n, P = toks.input_ids.shape
    L = subject.arch.n_layers
    outs = [torch.zeros(n, P, subject.arch.d_model) for _ in range(L)]
    order = torch.argsort(toks.lengths, stable=True)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            b = toks[idx]
            p = b.input_ids.shape[1]
            pos = (b.attention_mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=pos,
                        output_hidden_states=hidden, use_cache=False)
            if not hidden:
                continue
            hs = out.hidden_states
            for layer in range(L):
                outs[layer][idx, P - p:] = hs[layer + 1]
    return outs


def main() -> list[dict]:
    n = 200 if QUICK else 2000
    rows = []
    models = [("large-llama-8x512", large_llama())]
    if organism("base") is not None:
        models.insert(0, ("organism:base", organism("base")))
    for label, path in models:
        # The large model gets half the prompts: ratios are per-token costs, and 3 variants x 2
        # engines x repeats over 2,000 prompts at d_model 512 would not fit `make bench` in 15 min.
        texts = random_texts(n // 2) if label.startswith("large") else _world_texts(n)
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
        for engine in ("tl", "nnsight"):
            try:
                s = wb.load(path, engine=engine)
            except Exception as e:  # engine not available for this family: say so in the table
                rows.append({"bench": "capture", "model": label, "workbench": f"{engine}: {e}"})
                continue
            sites = s.sites("resid_post")
            t = interleaved({"base": lambda s=s: _hf_capture(s, plain, texts, 64),
                             "bare": lambda s=s: _hf_capture(s, plain, texts, 64, hidden=False),
                             "ours": lambda s=s, sites=sites: s.capture(texts, sites, batch_size=64, progress=False)},
                            repeats=3 if label.startswith("organism") else 2)
            base_t, bare_t, ours_t = t["base"], t["bare"], t["ours"]
            rows.append(row("capture resid_post (all layers)", label, "HF output_hidden_states", base_t,
                            f"capture ({engine})", ours_t, "<= 1.25x (tl)",
                            (ours_t / base_t <= 1.25) if engine == "tl" else None, prompts=len(texts),
                            vs_bare_forward=round(ours_t / bare_t, 3)))
    return rows


def _world_texts(n: int) -> list[str]:
    from workbench import tasks

    ex = tasks.facts(n, seed=0, split="eval")
    return [e.prompt + " " + e.target for e in ex]


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(main()).to_string(index=False))
