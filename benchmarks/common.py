"""Shared benchmark helpers: models to measure on, timing medians, a row format.

Benchmarks print ratios against a baseline measured in the same run, never absolute
thresholds, and are run by `make bench` (not by the tests).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUICK = os.environ.get("BENCH_QUICK") == "1"  # tiny sizes, for checking that benchmarks run
# Every library on one thread by default (torch here, BLAS in the scikit-learn baseline), so a
# ratio compares the code, not two thread pools contending on a small shared machine.
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run in rounds (a, b, c, a, b, c, ...) so that load on a
    shared machine hits all of them alike, instead of whichever happened to run during a burst."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median seconds, last result) of `repeats` calls, no warm-up: for baselines too slow to run twice."""
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def row(bench: str, model: str, baseline: str, base_s: float, ours: str, ours_s: float, target: str,
        ok: bool | None = None, **extra) -> dict:
    """One benchmark line; `ratio` = ours / baseline time (lower is better) unless noted."""
    return {"bench": bench, "model": model, "baseline": baseline, "baseline_s": round(base_s, 4),
            "workbench": ours, "workbench_s": round(ours_s, 4), "ratio": round(ours_s / base_s, 3),
            "target": target, "met": ok, **extra}


_LARGE: dict[str, Path] = {}


def large_llama(family: str = "llama") -> Path:
    """A tiny-random but not-so-tiny config (8 layers, d_model 512) so fixed overheads do not dominate."""
    if family in _LARGE:
        return _LARGE[family]
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
        PreTrainedTokenizerFast,
    )

    d = Path(tempfile.mkdtemp(prefix=f"bench-{family}-"))
    torch.manual_seed(0)
    layers = 2 if QUICK else 8
    common = dict(vocab_size=1000, hidden_size=512, num_hidden_layers=layers, num_attention_heads=8,
                  num_key_value_heads=8, max_position_embeddings=256)
    if family == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(intermediate_size=1024, num_local_experts=8,
                                                 num_experts_per_tok=2, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=1408, **common))
    model.save_pretrained(d)
    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(996)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>", padding_side="left").save_pretrained(d)
    _LARGE[family] = d
    return d


def random_texts(n: int, lo: int = 12, hi: int = 32, vocab: int = 996, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g)
    return [" ".join(f"w{int(i)}" for i in torch.randint(0, vocab, (int(k),), generator=g)) for k in lens]


def organism(name: str) -> Path | None:
    """The shipped organism's checkpoint, or None when the zoo has not been built."""
    try:
        from workbench import zoo

        p = zoo.path(name)
        return p if (p / "config.json").exists() else None
    except Exception:
        return None
