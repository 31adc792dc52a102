"""Activation diff of a ModelPair: how differently do base and tuned represent the same text?

    res = activation_diff(pair, texts)
    res.to_frame()        # per layer: cosine similarity and linear CKA of the residual streams
    res.kl_frame()        # per text and position: KL(p_tuned || p_base) of the next-token distribution

Both models read the same tokens. Per layer (`resid_post`) over all non-pad tokens:
- cosine: mean over tokens of cos(h_base, h_tuned);
- linear CKA (Kornblith et al. 2019) between the token x d_model matrices, as the cosine
  between the centred Gram matrices; its control is the CKA against a random permutation of
  the tuned rows (what "no token-wise correspondence" gives on this data).

Distances are computed as half the squared distance between unit vectors (1 - cos), so a
model diffed against itself gives exactly 0, not 1e-7.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.results import Result
from workbench.sites import Site


def check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("texts: expected a non-empty list of non-empty strings")
    return texts


def batches(texts: Sequence[str], size: int):
    if size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {size}")
    for i in range(0, len(texts), size):
        yield texts[i:i + size]


@torch.no_grad()
def run_both(pair, texts: Sequence[str], layers: Sequence[int]):
    """Tokens, logits and `resid_post` caches of both models on one batch of texts."""
    toks = pair.base.tokenize(list(texts))
    sites = [Site(layer, "resid_post") for layer in layers]
    lb, cb = pair.base.run(toks, cache=sites)
    lt, ct = pair.tuned.run(toks, cache=sites)
    return toks, (lb, [cb[s] for s in sites]), (lt, [ct[s] for s in sites])


def unit_dist(a: Tensor, b: Tensor) -> Tensor:
    """1 - cos(a, b) along the last axis, as |a/|a| - b/|b||^2 / 2 (exactly 0 when a == b)."""
    an = a / a.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    bn = b / b.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    return 0.5 * (an - bn).square().sum(-1)


def cka_distance(x: Tensor, y: Tensor) -> float:
    """1 - linear CKA between `tokens d` matrices (cosine of the centred Gram matrices)."""
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    kx, ky = (x @ x.T).flatten(), (y @ y.T).flatten()
    return float(unit_dist(kx, ky))


def cka_feature_space(x: Tensor, y: Tensor) -> float:
    """Linear CKA in its feature-space form ||Yc^T Xc||^2 / (||Xc^T Xc|| ||Yc^T Yc||) (parity reference)."""
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm()))


@dataclass(frozen=True)
class ActivationDiff(Result):
    base: str
    tuned: str
    layers: tuple
    cos_dist: np.ndarray  # [layer] mean 1 - cos over tokens
    cka_dist: np.ndarray  # [layer] 1 - linear CKA
    cka_control: np.ndarray  # [layer] CKA against a random permutation of the tuned rows
    kl: list  # per text: ndarray [pos] KL(p_tuned || p_base) at each real position
    tokens: list  # per text: the token strings
    texts: list
    n_tokens: int

    @property
    def cosine(self) -> np.ndarray:
        return 1 - self.cos_dist

    @property
    def cka(self) -> np.ndarray:
        return 1 - self.cka_dist

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": list(self.layers), "cosine": self.cosine, "cos_dist": self.cos_dist,
                             "cka": self.cka, "cka_dist": self.cka_dist, "cka_shuffled": self.cka_control})

    def kl_frame(self) -> pd.DataFrame:
        rows = [{"text": i, "pos": p, "token": tok, "kl": float(v)}
                for i, (ks, toks) in enumerate(zip(self.kl, self.tokens, strict=True))
                for p, (tok, v) in enumerate(zip(toks, ks, strict=True))]
        return pd.DataFrame(rows, columns=["text", "pos", "token", "kl"])

    @property
    def mean_kl(self) -> float:
        v = np.concatenate([np.asarray(k, dtype=float) for k in self.kl])
        return float(v.mean()) if v.size else 0.0

    def plot(self):
        import plotly.graph_objects as go

        x = [f"L{layer}" for layer in self.layers]
        fig = go.Figure([go.Scatter(x=x, y=self.cosine, mode="lines+markers", name="cosine"),
                         go.Scatter(x=x, y=self.cka, mode="lines+markers", name="linear CKA"),
                         go.Scatter(x=x, y=self.cka_control, mode="lines", line_dash="dot",
                                    name="CKA, shuffled tokens (control)")])
        fig.update_layout(title=f"Residual-stream similarity: {self.tuned} vs {self.base}", xaxis_title="layer",
                          yaxis_title="similarity", yaxis_range=[min(0.0, float(np.min(self.cka_control))) - 0.02, 1.02])
        return fig

    def plot_kl(self, i: int = 0):
        import plotly.graph_objects as go

        if not 0 <= i < len(self.kl):
            raise ValueError(f"i: expected 0 <= i < {len(self.kl)}, got {i}")
        toks = [f"{p}:{t}" for p, t in enumerate(self.tokens[i])]
        fig = go.Figure(go.Bar(x=toks, y=np.asarray(self.kl[i], dtype=float), marker_color="indianred"))
        fig.update_layout(title="KL(tuned || base) of the next-token distribution after each token",
                          xaxis_title="position: token", yaxis_title="KL (nats)")
        return fig


@torch.no_grad()
def activation_diff(pair, texts: Sequence[str] | str, *, batch_size: int = 16, max_tokens: int = 2048,
                    seed: int = 0, progress: bool | None = None) -> ActivationDiff:
    """Per-layer cosine and linear CKA of `resid_post`, per-position next-token KL, on `texts`.

    CKA uses at most `max_tokens` tokens (a seeded uniform sample, the same rows for both models).
    """
    texts = check_texts(texts)
    if max_tokens < 2:
        raise ValueError(f"max_tokens: expected >= 2, got {max_tokens}")
    layers = list(range(pair.arch.n_layers))
    xs: list[list[Tensor]] = [[] for _ in layers]
    ys: list[list[Tensor]] = [[] for _ in layers]
    kls, toks_out = [], []
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    n = 0
    for chunk in tqdm(list(batches(texts, batch_size)), desc="activation diff", disable=progress is False,
                      leave=False):
        toks, (lb, cb), (lt, ct) = run_both(pair, chunk, layers)
        m = toks.attention_mask.bool()
        n += int(m.sum())
        for i, (hb, ht) in enumerate(zip(cb, ct, strict=True)):
            hb, ht = hb[m].double(), ht[m].double()
            cos_sum[i] += unit_dist(hb, ht).sum()
            xs[i].append(hb.float())
            ys[i].append(ht.float())
        pb, pt = torch.log_softmax(lb.double(), -1), torch.log_softmax(lt.double(), -1)
        kl = (pt.exp() * (pt - pb)).sum(-1)  # batch pos
        for r in range(len(chunk)):
            ids = toks.input_ids[r][m[r]]
            kls.append(kl[r][m[r]].float().numpy())
            toks_out.append(pair.base.tokenizer.convert_ids_to_tokens(ids.tolist()))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[:max_tokens] if n > max_tokens else torch.arange(n)
    perm = torch.randperm(len(pick), generator=g)
    cka_d, ctrl = [], []
    for i in range(len(layers)):
        x, y = torch.cat(xs[i])[pick], torch.cat(ys[i])[pick]
        cka_d.append(cka_distance(x, y))
        ctrl.append(1 - cka_distance(x, y[perm]))
    return ActivationDiff(base=pair.base.name, tuned=pair.tuned.name, layers=tuple(layers),
                          cos_dist=(cos_sum / max(n, 1)).numpy(), cka_dist=np.asarray(cka_d),
                          cka_control=np.asarray(ctrl), kl=kls, tokens=toks_out, texts=texts, n_tokens=n)
