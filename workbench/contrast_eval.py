"""Does CGE find what is new? Detection rate and domain coverage against plain sampling.

    ev = exploration_eval(pair, tasks.novel_domain, domains=tasks.NOVEL_DOMAINS, n=20, seeds=(0, 1, 2))
    ev.to_frame()     # method x seed: detection_rate, coverage, generations to full coverage,
                      # coverage_auc (mean coverage after k generations, k = 1..n)
    ev.summary()      # mean and std over seeds per method
    ev.plot()         # coverage after k generations, per method

The judge is any callable `text -> label`: a domain name (str) when the text shows novel
content of that domain, else None/False; a judge that returns only True/False gives a
detection rate but no coverage. Baselines: plain sampling (temperature 1, no top-k/top-p)
from the tuned model, the usual way to look at what a fine-tune does, and from the base
model (how often the judge fires on text the fine-tune did not cause).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.contrast import Decoding, _check_pair, contrastive_generate, iterative_cge, prompt_ids
from workbench.contrast_decode import hf_twin
from workbench.models import ModelPair
from workbench.results import Result

Method = Literal["cge", "iterative_cge", "tuned_sampling", "base_sampling"]
METHODS: tuple[str, ...] = ("cge", "iterative_cge", "tuned_sampling", "base_sampling")


@dataclass(frozen=True)
class ExplorationEval(Result):
    """`frame`: one row per (method, seed); `generations`: one row per generated text."""

    frame: pd.DataFrame
    generations: pd.DataFrame
    domains: list[str]
    config: dict

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> pd.DataFrame:
        """Mean and std over seeds of each metric, per method (in the order run)."""
        cols = ["detection_rate", "coverage", "first_full_coverage", "coverage_auc"]
        g = self.frame.groupby("method", sort=False)[cols]
        out = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std"))
        out["seeds"] = self.frame.groupby("method", sort=False)["seed"].nunique()
        return out.reset_index()

    def coverage_at(self, k: int) -> pd.DataFrame:
        """Coverage after the first k generations, per method and seed (compare methods at equal n)."""
        cc = self.coverage_curve()
        return pd.DataFrame(cc.loc[cc["k"] == k]).reset_index(drop=True)

    def coverage_curve(self) -> pd.DataFrame:
        """Coverage after each of the first k generations, per method and seed."""
        rows = []
        for key, g in self.generations.groupby(["method", "seed"], sort=False):
            m, s = key  # type: ignore[misc]  # a 2-tuple: grouped by two columns
            seen: set[str] = set()
            for k, lab in enumerate(g.sort_values("index")["label"], start=1):
                if isinstance(lab, str) and lab in self.domains:
                    seen.add(lab)
                rows.append(dict(method=m, seed=s, k=k, coverage=len(seen) / max(len(self.domains), 1)))
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(1, 2, subplot_titles=("detection rate (mean over seeds)",
                                                  "domains covered after k generations"))
        s = self.summary()
        fig.add_bar(x=s["method"], y=s["detection_rate_mean"], error_y=dict(array=s["detection_rate_std"]),
                    showlegend=False, row=1, col=1)
        cc = self.coverage_curve()
        if len(cc):
            for m, g in cc.groupby("method", sort=False):
                mean = g.groupby("k")["coverage"].mean()
                fig.add_trace(go.Scatter(x=mean.index, y=mean.values, mode="lines", name=m), row=1, col=2)
        fig.update_yaxes(range=[0, 1.05])
        fig.update_xaxes(title_text="generations", row=1, col=2)
        return fig


def judge_labels(judge: Callable[[str], Any], texts: Sequence[str]) -> list[str | bool | None]:
    """Apply the judge; str labels name a domain, True means novel without a domain."""
    out: list[str | bool | None] = []
    for t in texts:
        lab = judge(t)
        out.append(lab if isinstance(lab, str) else (True if lab else None))
    return out


def detection_rate(labels: Sequence[Any]) -> float:
    """Share of generations the judge marked as showing novel content."""
    return float(np.mean([lab is not None and lab is not False for lab in labels])) if len(labels) else float("nan")


def coverage(labels: Sequence[Any], domains: Sequence[str]) -> float:
    """Share of `domains` that some generation was judged to show."""
    if not domains:
        return float("nan")
    return len({lab for lab in labels if isinstance(lab, str)} & set(domains)) / len(domains)


def first_full_coverage(labels: Sequence[Any], domains: Sequence[str]) -> float:
    """How many generations (in order) it took to see every domain; NaN if never."""
    seen: set[str] = set()
    for k, lab in enumerate(labels, start=1):
        if isinstance(lab, str) and lab in domains:
            seen.add(lab)
        if domains and len(seen) == len(set(domains)):
            return float(k)
    return float("nan")


def coverage_auc(labels: Sequence[Any], domains: Sequence[str]) -> float:
    """Mean over k = 1..n of the coverage after the first k generations: "more domains at equal
    n", summarised over every n (1.0 = every domain from the first generation on)."""
    if not domains or not labels:
        return float("nan")
    return float(np.mean([coverage(labels[:k], domains) for k in range(1, len(labels) + 1)]))


@torch.no_grad()
def plain_sample(subject, *, n: int, max_new_tokens: int, seed: int, prompt: str | None = None) -> list[str]:
    """Ancestral sampling (temperature 1, no top-k/top-p) with HF `generate` on a bare twin of
    `subject`, from BOS or `prompt`; the global torch RNG is left as it was."""
    model = hf_twin(subject)
    tok = subject.tokenizer
    ids = torch.tensor([prompt_ids(tok, prompt)] * n, device=subject.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             top_k=None, top_p=None, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, use_cache=True)
    return [t.strip() for t in tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]


def exploration_eval(pair: ModelPair, judge: Callable[[str], Any], *, domains: Sequence[str], n: int = 20,
                     seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] = METHODS, max_new_tokens: int = 24,
                     alpha: float = 0.1, gamma: float = 1.0, decoding: Decoding = "sample", num_beams: int = 4,
                     lr: float = 1e-3, steps_per_example: int = 1,
                     optimizer: Literal["adam", "sgd"] = "adam", prompt: str | None = None,
                     progress: bool | None = None) -> ExplorationEval:
    """Run each method for `n` generations per seed and judge every text.

    Static CGE generates n at once (with `decoding="beam"`: the n best hypotheses of one beam
    search of max(num_beams, n) beams); iterative CGE generates n one by one (each after a step
    on the base copy; with beam search, each is the best of `num_beams`); the baselines sample n
    from the tuned / base model.
    """
    _check_pair(pair)
    if not callable(judge):
        raise ValueError(f"judge: expected a callable text -> label, got {type(judge).__name__}")
    domains = list(domains)
    if not all(isinstance(d, str) for d in domains):
        raise ValueError(f"domains: expected a list of domain names (str), got {domains!r}")
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds: expected a non-empty list of ints, got {seeds!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods: expected a non-empty subset of {METHODS}, got {list(methods)!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    gen_rows, rows = [], []
    jobs = [(m, s) for m in methods for s in seeds]
    for m, s in tqdm(jobs, desc="exploration eval", disable=not progress if progress is not None else None,
                     leave=False):
        kw = dict(n=n, max_new_tokens=max_new_tokens, alpha=alpha, gamma=gamma, seed=s, prompt=prompt,
                  decoding=decoding)
        scores: list[float] = []
        if m == "cge":
            r = contrastive_generate(pair, num_beams=max(num_beams, n), **kw)
            texts, scores = r.texts, r.scores
        elif m == "iterative_cge":
            r = iterative_cge(pair, lr=lr, steps_per_example=steps_per_example, optimizer=optimizer,
                              num_beams=num_beams, progress=False, **kw)
            texts, scores = r.texts, r.scores
        else:
            subj = pair.tuned if m == "tuned_sampling" else pair.base
            texts = plain_sample(subj, n=n, max_new_tokens=max_new_tokens, seed=s, prompt=prompt)
            scores = [float("nan")] * len(texts)
        labels = judge_labels(judge, texts)
        for i, (t, lab, sc) in enumerate(zip(texts, labels, scores, strict=True)):
            gen_rows.append(dict(method=m, seed=s, index=i, text=t, label=lab if isinstance(lab, str) else
                                 (None if lab is None else "novel"), novel=lab is not None, score=sc))
        rows.append(dict(method=m, seed=s, n=len(texts), detection_rate=detection_rate(labels),
                         coverage=coverage(labels, domains), first_full_coverage=first_full_coverage(labels, domains),
                         coverage_auc=coverage_auc(labels, domains)))
    cfg = dict(n=n, seeds=seeds, methods=list(methods), max_new_tokens=max_new_tokens, alpha=alpha, gamma=gamma,
               decoding=decoding, num_beams=num_beams,
               lr=lr, steps_per_example=steps_per_example, optimizer=optimizer, prompt=prompt,
               judge=getattr(judge, "__name__", repr(judge)), pair=repr(pair))
    return ExplorationEval(frame=pd.DataFrame(rows), generations=pd.DataFrame(gen_rows), domains=domains, config=cfg)
