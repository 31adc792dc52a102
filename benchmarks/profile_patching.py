"""torch.profiler on the slowest path: the resid_pre patching sweep with a fresh corrupt prompt
on the 8 x d512 Llama (the row of `bench_patching` with nothing to skip). Prints the operators
by self CPU time; docs/benchmarks.md records what bounds the path. Not part of `make bench`.

    .venv/bin/python benchmarks/profile_patching.py
"""

from __future__ import annotations

from bench_patching import _inputs
from common import large_llama
from torch.profiler import ProfilerActivity, profile

import workbench as wb
from workbench.patching import activation_patching


def main() -> None:
    s = wb.load(large_llama())
    clean, corruptions, metric = _inputs(s, "large-llama-8x512", 4)
    corrupt = corruptions["fresh prompt"]
    activation_patching(s, clean, corrupt, metric, progress=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        activation_patching(s, clean, corrupt, metric, progress=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
