"""Model Surgery: time and memory to select rows, apply and revert, against one plain pass that
reads every gate matrix (`torch.cat` of a clone of each), measured in the same run.

Issue target: applying the edit takes < 1 s on the organisms and is dominated by one pass over
the gate weights. Rows: `fit` (score every gate row + global top-k: the pass over the weights),
`apply+revert` of a fitted edit (writes only the chosen rows), and the two together. K is 1 % of
all gate rows, as in the paper (16,384 of 32 x 11,008). Memory is the bytes torch allocates
during the operation (profiler, `profile_memory=True`), since CPU torch has no peak counter.
Times are medians of single-threaded *process CPU time*: on a shared machine wall time mostly
measures the neighbours, and idle OpenMP threads spin (which CPU time would count), so the bench
runs with one torch thread and restores the setting; the wall-clock median is reported alongside.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import QUICK, large_llama, median_time, organism, row

import workbench as wb
from edits.surgery import ModelSurgery


def _gate_pass(subject) -> torch.Tensor:
    """The baseline: read every gate matrix once."""
    return torch.cat([subject.params.gate(ly).clone() for ly in subject.arch.dense_layers])


def _cpu_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts)


def _allocated_mb(fn) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(0, e.self_cpu_memory_usage) for e in (prof.events() or [])) / 2**20


def _bench(label: str, path) -> list[dict]:
    s = wb.load(path)
    w = torch.randn(s.arch.d_model, generator=torch.Generator().manual_seed(0))
    n_gate = len(s.arch.dense_layers) * s.arch.d_mlp
    k = max(1, n_gate // 100)
    edit = ModelSurgery.fit(s, w, n_rows=k, alpha=1.0)

    def apply_revert(e=edit):
        e.apply(s).revert()

    def fit_apply_revert():
        ModelSurgery.fit(s, w, n_rows=k, alpha=1.0).apply(s).revert()

    reps = 3 if QUICK else 7
    base_t = _cpu_time(lambda: _gate_pass(s), reps)
    base_mb = _allocated_mb(lambda: _gate_pass(s))
    extra = dict(rows=k, gate_rows=n_gate, baseline_alloc_mb=round(base_mb, 2))
    out = []
    for name, fn, target, ok in [
        ("fit (score all gate rows)", lambda: ModelSurgery.fit(s, w, n_rows=k), "~1x (one pass)", None),
        ("apply+revert (fitted)", apply_revert, "< 1 s", None),
        ("fit+apply+revert", fit_apply_revert, "< 1 s, ~1x", None),
    ]:
        t, wall = _cpu_time(fn, reps), median_time(fn, repeats=reps)
        out.append(row("surgery " + name, label, "cat(clone(gate_l)) [cpu s]", base_t, name + " [cpu s]", t,
                       target, ok if ok is not None else wall < 1.0, wall_s=round(wall, 4),
                       alloc_mb=round(_allocated_mb(fn), 2), **extra))
    return out


def main() -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models = [("large-llama-8x512", large_llama())]
    if organism("base") is not None:
        models.insert(0, ("organism:base", organism("base")))
    try:
        for label, path in models:
            rows += _bench(label, path)
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(main()).to_string(index=False))
