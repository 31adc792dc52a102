"""On-disk store: capture a dataset whose activations are 4x a memory budget and check that
peak RSS stays under (RSS after loading the model) + budget. Runs in a child process so the
measurement is not polluted by other benchmarks; RSS is sampled by a thread with psutil."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from common import QUICK, large_llama

CHILD = r"""
import json, sys, threading, time, psutil, torch
sys.path.insert(0, "benchmarks")
import workbench as wb
path, n, store = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from common import random_texts
texts = random_texts(n, lo=24, hi=32)
s = wb.load(path)
proc = psutil.Process()
rss0 = proc.memory_info().rss
peak = [rss0]
stop = False
def sample():
    while not stop:
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.01)
th = threading.Thread(target=sample); th.start()
t = time.perf_counter()
acts = s.capture(texts, s.sites("resid_post"), batch_size=32, store=store, progress=False)
secs = time.perf_counter() - t
stop = True; th.join()
total = sum(acts[x].numel() * 4 for x in acts.sites)
print(json.dumps({"rss_after_load": rss0, "peak": peak[0], "total_bytes": total, "seconds": secs}))
"""


def main() -> list[dict]:
    n = 300 if QUICK else 2000
    path = large_llama()
    with tempfile.TemporaryDirectory() as store:
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(n), store], capture_output=True,
                             text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    budget = r["total_bytes"] / 4
    grew = r["peak"] - r["rss_after_load"]
    return [{"bench": "on-disk store", "model": "large-llama-8x512", "prompts": n,
             "activations_MB": round(r["total_bytes"] / 2**20), "budget_MB": round(budget / 2**20),
             "rss_growth_MB": round(grew / 2**20), "ratio": round(grew / budget, 3),
             "target": "rss growth <= budget (activations = 4x budget)", "met": grew <= budget,
             "workbench_s": round(r["seconds"], 2)}]


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
