"""Activation patching: a full layer x position resid_pre sweep, ours (batched, identical-cell
skipping) vs TransformerLens's `get_act_patch_resid_pre` (one forward per cell), same model,
same inputs, numbers checked equal in the same run.

Two corruptions, because the skip depends on them: 'query label' changes one token near the end
(the entity-tracking corruption: cells before it are identical and skipped),
'fresh prompt' changes every token (nothing to skip: batching alone).
"""

from __future__ import annotations

import os

import torch
from common import QUICK, large_llama, median_time, organism, row

import workbench as wb
from workbench.engines.tl_patching import tl_act_patch
from workbench.patching import LogitDiff, activation_patching


def _inputs(subject, label: str, n: int):
    """(clean ids, {corruption: corrupt ids}, metric) for one model."""
    g = torch.Generator().manual_seed(0)
    if label.startswith("organism"):
        from workbench.circuits import entity_batch
        from workbench.tasks import entity_tracking

        ex = entity_tracking(n, seed=0, split="eval", n_objects=4)
        fresh = entity_tracking(n, seed=1, split="eval", n_objects=4)
        eb, ef = entity_batch(subject, ex), entity_batch(subject, fresh)
        clean = subject.tokenize(list(eb.prompts)).input_ids
        fresh_ids = subject.tokenize(list(ef.prompts)).input_ids
        correct, wrong = eb.answers, ef.answers
    else:
        P = int(os.environ.get("BENCH_PATCHING_TOKENS", 12 if QUICK else 16))
        clean = torch.randint(4, 1000, (n, P), generator=g)
        clean[:, 0] = 1
        fresh_ids = torch.randint(4, 1000, (n, P), generator=g)
        fresh_ids[:, 0] = 1
        correct, wrong = torch.randint(4, 1000, (n,), generator=g), torch.randint(4, 1000, (n,), generator=g)
    q = -1 if label.startswith("organism") else -3  # the organism's question ends with the query label
    late = clean.clone()
    late[:, q] = clean[torch.roll(torch.arange(n), 1), q]
    if torch.equal(late, clean):
        late[:, q] = (clean[:, q] + 1) % subject.arch.d_vocab
    return clean, {"query label": late, "fresh prompt": fresh_ids}, LogitDiff(correct, wrong)


def main() -> list[dict]:
    rows = []
    models = [("large-llama-8x512", large_llama())]
    if organism("base") is not None:
        models.insert(0, ("organism:base", organism("base")))
    n = 4  # a 2-core CI box runs TL's one-forward-per-cell sweep 3 times per row
    repeats = int(os.environ.get("BENCH_PATCHING_REPEATS", 1 if QUICK else 3))
    for label, path in models:
        s = wb.load(path)
        clean, corruptions, metric = _inputs(s, label, n)
        for cname, corrupt in corruptions.items():
            ours = activation_patching(s, clean, corrupt, metric, component="resid_pre", progress=False)
            ref = tl_act_patch(s, "resid_pre", clean, corrupt, metric)
            diff = float((ours.values - ref.float()).abs().max())
            scale = float(ref.abs().max())
            t_tl = median_time(lambda s=s, c=corrupt: tl_act_patch(s, "resid_pre", clean, c, metric),
                               repeats=repeats, warmup=0)
            t_ours = median_time(lambda s=s, c=corrupt: activation_patching(s, clean, c, metric, progress=False),
                                 repeats=repeats, warmup=0)
            L, P = ours.values.shape
            rows.append(row("patching resid_pre layer x pos", label, "TL get_act_patch_resid_pre", t_tl,
                            "activation_patching", t_ours, ">= 3x faster, identical numbers",
                            t_tl / t_ours >= 3 and diff <= 1e-4 * max(1.0, scale), corruption=cname,
                            speedup=round(t_tl / t_ours, 2), max_abs_diff=diff, cells=L * P,
                            cells_run=ours.n_cells_run, prompts=n, tokens=P))
    return rows


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(main()).to_string(index=False))
