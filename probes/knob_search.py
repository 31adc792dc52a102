"""Where does the intent move? The O(log L) layer search of Minder, Du et al. (2025).

    s = search_layers(subject, pairs, tau=0.85, phi=0.05)
    s.layers, s.lower, s.upper, s.n_patched_passes; s.plot()

Each (context, query) item gives two (target, source) rows: target with one intent, source the
same prompt with the other. A *patched pass* copies the source's attention outputs at the last
token into the target for a set of layers and reads out p(source answer), at the output and per
layer through the logit lens (final norm + unembedding of each `resid_post`).

1. U = the smallest upper bound such that patching layers [0, U) gives mean p(source) > tau
   (binary search over U; every layer below the answer can carry the intent, none above can);
2. B = the largest lower bound such that [B, U) still does (binary search over B);
3. with [B, U) patched, every later layer l >= U whose decoded p(source) drops by more than phi
   from layer l-1 is added: it overwrites the moved signal, so it is part of the mechanism.

Attention outputs are what move information *into* the last position, so patching them at every
layer makes the last-token stream the source's: the search looks for the few layers where the
intent word's information is read in. Binary search assumes that patching more layers never
moves the answer less; whatever the function, it ends on a boundary (the set passes, the set one
layer smaller fails), which the tests check. Cost: ceil(log2 L) + ceil(log2 U) patched passes
(+1 for the ceiling below).

`criterion="relative"` (default) compares with tau times the *ceiling*, the mean p(source) when
every layer is patched, which equals the source prompt's own p(its answer) exactly (the last
token's stream becomes the source's). The paper's absolute tau=0.85 assumes 7-9B models that are
> 0.85 sure of both answers; a small organism that is right but 0.78 sure on average could never
pass it, at any layer. `criterion="absolute"` is the paper's rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probes.knob_data import IntentPairs, confident
from workbench.lens import readout
from workbench.results import Result
from workbench.sites import Site


@dataclass(frozen=True)
class LayerSearch(Result):
    """The found layer range and every patched pass the search ran (rows of `patched`)."""

    subject: str
    n_layers: int
    tau: float
    phi: float
    criterion: str
    threshold: float        # what mean p(source) must exceed: tau (absolute) or tau x ceiling (relative)
    lower: int              # B
    upper: int              # U (exclusive): [B, U) moves the answer
    added: tuple[int, ...]  # later layers that overwrite the signal (drop > phi)
    reached: bool           # False: even patching every layer stays <= tau
    stages: tuple[str, ...]  # per pass: clean / upper / lower / final
    patched: np.ndarray     # passes x layers, 1 where attn_out was patched
    p_source: np.ndarray    # passes: mean p(source answer) at the output
    readout: np.ndarray     # passes x layers: mean decoded p(source answer) after each layer
    n_items: int
    n_forward_calls: int    # model calls incl. caching the sources (batched)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(set(range(self.lower, self.upper)) | set(self.added)))

    @property
    def n_patched_passes(self) -> int:
        return int(sum(s != "clean" for s in self.stages))  # the ceiling pass counts

    @property
    def site(self) -> Site:
        """Where to look for the knob: the residual stream right after the attention of layer U-1.

        `resid_mid` (the stream once the patched attention output is added, before that layer's
        MLP): the search moved the intent with attention outputs, so that is where it first sits
        in the stream as a clean, input-independent vector. On the intent-tuned organism (U=1)
        DAS there reaches interchange accuracy 0.84 and steered PairAcc 0.97, but after the MLP
        (`resid_post`, the same layer) 0.62 and 0.74: the MLP mixes intent with the query
        nonlinearly (notebooks/context_knob.ipynb).
        """
        return Site(self.upper - 1, "resid_mid")

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for i, st in enumerate(self.stages):
            pl = [ly for ly in range(self.n_layers) if self.patched[i, ly]]
            for ly in range(self.n_layers):
                rows.append({"pass": i, "stage": st, "patched": str(pl), "layer": ly,
                             "p_source_decoded": float(self.readout[i, ly]), "p_source": float(self.p_source[i])})
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        labels = [f"{i}: {st}" for i, st in enumerate(self.stages)]
        fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.12,
                            subplot_titles=("patched attn_out layers (colour: p(source))",
                                            "decoded p(source) per layer"))
        z = np.where(self.patched > 0, self.p_source[:, None], np.nan)
        fig.add_trace(go.Heatmap(z=z, x=list(range(self.n_layers)), y=labels, zmin=0, zmax=1, colorscale="Viridis",
                                 colorbar=dict(x=0.42, title="p")), 1, 1)
        for i, lab in enumerate(labels):
            fig.add_trace(go.Scatter(x=list(range(self.n_layers)), y=self.readout[i], mode="lines+markers",
                                     name=lab), 1, 2)
        fig.add_hline(y=self.threshold, line_dash="dash", row=1, col=2)
        fig.update_yaxes(autorange="reversed", row=1, col=1)
        fig.update_layout(title=f"{self.subject}: layer search, range {list(self.layers)} "
                                f"({self.n_patched_passes} patched passes, threshold {self.threshold:.2f})")
        return fig


def search_layers(subject, pairs: IntentPairs, *, tau: float = 0.85, phi: float = 0.05,
                  criterion: Literal["relative", "absolute"] = "relative",
                  keep: Literal["confident", "all"] = "confident", batch_size: int = 64,
                  progress: bool = False) -> LayerSearch:
    """Find the layers whose attention moves the intent into the last token (see module doc)."""
    if not isinstance(pairs, IntentPairs):
        raise ValueError(f"pairs: expected IntentPairs (see intent_pairs), got {type(pairs).__name__}")
    if not 0 < tau < 1:
        raise ValueError(f"tau: expected 0 < tau < 1, got {tau!r}")
    if not 0 <= phi < 1:
        raise ValueError(f"phi: expected 0 <= phi < 1, got {phi!r}")
    if keep not in ("confident", "all"):
        raise ValueError(f"keep: expected 'confident' or 'all', got {keep!r}")
    if criterion not in ("relative", "absolute"):
        raise ValueError(f"criterion: expected 'relative' or 'absolute', got {criterion!r}")
    for ly in range(subject.arch.n_layers):
        subject.check_site(Site(ly, "attn_out"))
    pairs.check_lengths(subject)
    if keep == "confident":
        pairs = confident(subject, pairs, batch_size=batch_size)
    L = subject.arch.n_layers
    targets = list(pairs.prompt_ctx) + list(pairs.prompt_prior)
    sources = list(pairs.prompt_prior) + list(pairs.prompt_ctx)
    ids_c, ids_p = pairs.answer_ids(subject.tokenizer)
    src_ans = torch.cat([ids_p, ids_c])
    runner = _Patcher(subject, targets, sources, src_ans, batch_size)

    stages: list[str] = []
    rows: list[tuple[np.ndarray, float, np.ndarray]] = []
    memo: dict[tuple[int, ...], float] = {}
    bar = tqdm(desc=f"layer search {subject.name}", disable=not progress, leave=False)

    def f(layers: tuple[int, ...], stage: str) -> float:
        if layers in memo:
            return memo[layers]
        p, per_layer = runner(layers)
        mask = np.zeros(L)
        mask[list(layers)] = 1
        stages.append(stage)
        rows.append((mask, p, per_layer))
        memo[layers] = p
        bar.update(1)
        return p

    f((), "clean")
    thr = tau * f(tuple(range(L)), "ceiling") if criterion == "relative" else tau
    upper = bisect_upper(lambda U: f(tuple(range(U)), "upper"), L, thr)
    reached = f(tuple(range(upper)), "upper") > thr
    lower = bisect_lower(lambda B: f(tuple(range(B, upper)), "lower"), upper, thr) if reached else 0
    # 3. later layers whose decoded p(source) drops by > phi overwrite the signal
    core = tuple(range(lower, upper))
    f(core, "lower")
    per_layer = rows[[i for i, r in enumerate(rows) if tuple(np.flatnonzero(r[0])) == core][0]][2]
    added = tuple(ly for ly in range(upper, L) if per_layer[ly - 1] - per_layer[ly] > phi) if reached else ()
    if added:
        f(tuple(sorted(set(core) | set(added))), "final")
    bar.close()
    return LayerSearch(subject=subject.name, n_layers=L, tau=float(tau), phi=float(phi), criterion=criterion,
                       threshold=float(thr), lower=lower, upper=upper,
                       added=added, reached=bool(reached), stages=tuple(stages),
                       patched=np.stack([r[0] for r in rows]), p_source=np.array([r[1] for r in rows]),
                       readout=np.stack([r[2] for r in rows]), n_items=len(targets),
                       n_forward_calls=runner.calls)


def bisect_upper(f, n_layers: int, tau: float) -> int:
    """The smallest U in 1..n_layers with f(U) > tau (n_layers if none): ceil(log2 n_layers) calls."""
    lo, hi = 1, n_layers
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid) > tau:
            hi = mid
        else:
            lo = mid + 1
    return lo


def bisect_lower(f, upper: int, tau: float) -> int:
    """The largest B in 0..upper-1 with f(B) > tau, given f(0) > tau: ceil(log2 upper) calls."""
    lo, hi = 0, upper - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if f(mid) > tau:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Patcher:
    """Caches the sources' attention outputs at the last token once; then one call per layer set."""

    def __init__(self, subject, targets: list[str], sources: list[str], src_ans: torch.Tensor, batch_size: int):
        self.subject, self.src_ans, self.calls = subject, src_ans, 0
        L = subject.arch.n_layers
        self.attn = [Site(ly, "attn_out") for ly in range(L)]
        self.resid = [Site(ly, "resid_post") for ly in range(L)]
        self.batches = []
        n = len(targets)
        for i in range(0, n, batch_size):
            sl = slice(i, min(i + batch_size, n))
            # tokenized together, so each target and its (equal-length) source share the width
            tok = subject.tokenize(targets[sl] + sources[sl])
            k = sl.stop - sl.start
            t = _rows(tok, 0, k)
            s = _rows(tok, k, 2 * k)
            with torch.no_grad():
                _, cache = subject.run(s, cache=self.attn)
            self.calls += 1
            self.batches.append((t, {st.layer: cache[st][:, -1].clone() for st in self.attn}, src_ans[sl]))

    @torch.no_grad()
    def __call__(self, layers: tuple[int, ...]) -> tuple[float, np.ndarray]:
        ps, per = [], []
        for t, src, ans in self.batches:
            def put(x, v):
                x = x.clone()
                x[:, -1] = v
                return x

            hooks = [(Site(ly, "attn_out"), lambda x, v=src[ly]: put(x, v)) for ly in layers]
            logits, cache = self.subject.run(t, hooks=hooks, cache=self.resid)
            self.calls += 1
            r = torch.arange(len(ans))
            ps.append(logits[:, -1].float().softmax(-1)[r, ans])
            per.append(torch.stack([readout(self.subject, cache[s][:, -1]).float().softmax(-1)[r, ans]
                                    for s in self.resid], 1))
        return float(torch.cat(ps).mean()), torch.cat(per).mean(0).cpu().numpy()


def _rows(tok, a: int, b: int):
    """Rows a..b of a padded batch, keeping its full width (no column trimming)."""
    from workbench.subject import Tokens

    return Tokens(tok.input_ids[a:b], tok.attention_mask[a:b])
