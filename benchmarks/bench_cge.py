"""CGE: contrastive decoding throughput vs plain generation from one model.

Contrastive decoding runs two models per token (tuned and base, each with its own KV
cache), so 0.5x is the limit; the target is >= 0.4x. Baseline: HF `generate` (ancestral
sampling, KV cache) of the tuned model alone, on the same bare HF model class the CGE loop
uses; both produce exactly n x T tokens (EOS cannot stop either), batch n. Timings alternate
between the two so load on the machine hits both alike; we report the median of per-repeat
throughput ratios. `ratio` here is tokens/s(CGE) / tokens/s(plain): higher is better.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import QUICK, large_llama, organism

import workbench as wb
from workbench.contrast import _banned, prompt_ids
from workbench.contrast_decode import hf_twin, sample


def _pairs():
    out = []
    if organism("base") is not None and organism("novel-tuned") is not None:
        out.append(("organism:base/novel-tuned", lambda: wb.ModelPair.load(str(organism("base")),
                                                                          str(organism("novel-tuned")))))

    def large():
        path = large_llama()
        # A second random init of the same architecture stands in for the tuned model.
        from transformers import AutoModelForCausalLM

        base = wb.load(path)
        tuned = wb.load(path)
        torch.manual_seed(1)
        fresh = AutoModelForCausalLM.from_config(tuned.hf_model.config)
        with torch.no_grad():
            for k, v in fresh.named_parameters():
                if k in tuned.params:
                    tuned.params[k].copy_(v)
        return wb.ModelPair(base, tuned)

    out.append(("large-llama-8x512 (random pair)", large))
    return out


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> list[dict]:
    rows = []
    for label, make in _pairs():
        # The larger pair decodes ~30x slower: fewer repeats keep `make bench` under 15 minutes.
        n, T = (4, 16) if QUICK else (16, 64)
        repeats = 3 if QUICK else (7 if label.startswith("organism") else 3)
        pair = make()
        tuned, base = hf_twin(pair.tuned), hf_twin(pair.base)
        tok = pair.tuned.tokenizer
        prefix = torch.tensor([prompt_ids(tok, None)])
        ids = prefix.expand(n, -1).contiguous()

        def plain():
            with torch.no_grad():
                out = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=1.0, top_k=None, top_p=None, max_new_tokens=T, min_new_tokens=T,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
            assert out.shape[1] - ids.shape[1] == T

        gen = torch.Generator().manual_seed(0)

        def cge():
            d = sample(tuned, base, prefix, n=n, max_new_tokens=T, alpha=0.1, gamma=1.0, temperature=1.0,
                       eos=None, banned=_banned(pair), generator=gen)
            assert all(len(t) == T for t in d.token_ids)

        plain()  # warm-up
        cge()
        tp, tc = [], []
        for _ in range(repeats):
            tp.append(_time(plain))
            tc.append(_time(cge))
        ratios = [p / c for p, c in zip(tp, tc, strict=True)]
        r = statistics.median(ratios)
        toks = n * T
        rows.append({"bench": "cge throughput", "model": label, "baseline": "HF generate (tuned only, sampling)",
                     "baseline_s": round(statistics.median(tp), 4), "workbench": "contrastive_generate loop (2 models)",
                     "workbench_s": round(statistics.median(tc), 4), "ratio": round(r, 3),
                     "target": ">= 0.4x tokens/s (limit 0.5x)", "met": r >= 0.4,
                     "plain_tok_s": round(toks / statistics.median(tp), 1),
                     "cge_tok_s": round(toks / statistics.median(tc), 1),
                     "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                     "batch": n, "new_tokens": T, "repeats": repeats, "note": "ratio = throughput ratio"})
    return rows


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(main()).to_string(index=False))
