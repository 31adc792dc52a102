"""Expert switch overhead: a forward pass with an active SwitchExperts vs the plain forward.

Both are `subject.forward` on the same batch through the same engine, interleaved and timed
as medians in one run, so the ratio is the cost of re-routing in the router hooks. The switch
names one expert off in every MoE layer and forces one on in the first (also with a router-logit
bias): `mask_logits` keeps top_k experts per token (the same expert compute, re-routed);
`drop_renorm` computes fewer.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import QUICK, large_llama, organism, random_texts, row

import workbench as wb
from edits.experts import SwitchExperts


def _interleaved(fa, fb, repeats: int) -> tuple[float, float]:
    fa()  # warm-up
    fb()
    ta, tb = [], []
    for _ in range(repeats):
        for f, ts in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def _switch(s, mode: str, on_bias: float = 0.0) -> SwitchExperts:
    a = s.arch
    return SwitchExperts(off=[(ly, a.n_experts - 1) for ly in a.moe_layers], on=[(a.moe_layers[0], 0)], mode=mode,
                         on_bias=on_bias)


def main() -> list[dict]:
    rows = []
    models = [("large-mixtral-8x512", large_llama("mixtral"), random_texts(16 if QUICK else 64))]
    if organism("moe") is not None:
        from workbench.tasks.behaviours import refusal

        models.insert(0, ("organism:moe", organism("moe"), [e.prompt for e in refusal(256, split="eval")]))
    repeats = 3 if QUICK else 7  # interleaved medians; 15 made this the longest bench under load
    for label, path, texts in models:
        s = wb.load(path, engine="tl")
        toks = s.tokenize(texts)

        def plain(s=s, toks=toks):
            with torch.no_grad():
                s.forward(toks)

        for mode, bias in (("drop_renorm", 0.0), ("mask_logits", 0.0), ("mask_logits", 2.0)):
            edit = _switch(s, mode, bias)

            def switched(s=s, toks=toks, edit=edit):
                with torch.no_grad(), edit.applied(s):
                    s.forward(toks)

            base_t, ours_t = _interleaved(plain, switched, repeats)
            rows.append(row("expert switch forward", label, "plain forward (tl)", base_t,
                            f"SwitchExperts {mode}{f', on_bias {bias:g}' if bias else ''} (tl)", ours_t, "<= 1.1x", ours_t / base_t <= 1.1,
                            prompts=len(texts), tokens=int(toks.attention_mask.sum()),
                            switched=f"{len(edit.off)} off, {len(edit.on)} on"))
    return rows


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(main()).to_string(index=False))
