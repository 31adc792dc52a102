"""`make bench`: run every benchmark, print one table of ratios, save benchmarks/results.json.

Each bench module exposes `main() -> list[dict]`; every ratio is against a baseline measured
in the same run. Set BENCH_QUICK=1 for a fast smoke run (sizes too small to be meaningful).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

BENCHES = ["bench_capture", "bench_store", "bench_patching", "bench_probe", "bench_cge", "bench_experts",
           "bench_surgery"]


def main() -> None:
    rows: list[dict] = []
    t0 = time.perf_counter()
    for name in BENCHES:
        t = time.perf_counter()
        try:
            mod = importlib.import_module(name)
            got = mod.main()
        except Exception as e:  # one failing bench must not hide the others
            traceback.print_exc()
            got = [{"bench": name, "workbench": f"FAILED: {type(e).__name__}: {e}"}]
        for r in got:
            r.setdefault("bench_seconds", round(time.perf_counter() - t, 1))
        rows.extend(got)
        print(pd.DataFrame(got).to_string(index=False), flush=True)
    cols = ["bench", "model", "baseline", "workbench", "ratio", "target", "met"]
    df = pd.DataFrame(rows)
    print(f"\n== all benchmarks ({time.perf_counter() - t0:.0f} s) ==")
    print(df[[c for c in cols if c in df]].to_string(index=False))
    out = Path(__file__).parent / "results.json"
    out.write_text(json.dumps(rows, indent=1, default=str))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
