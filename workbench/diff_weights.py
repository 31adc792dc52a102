"""Weight diff of a ModelPair: where did fine-tuning write, how big, how low-rank, how sparse.

    res = weight_diff(pair)                    # per parameter, under HF's own names
    res.plot()                                 # layer x module heatmap of the relative delta norm
    res.global_share                           # share of delta energy in the top 0.01/0.1/1 % of entries
    dare = dare_check(pair, metric)            # drop p of the delta, rescale, re-measure

Per parameter (HF name, layer, module kind) we report ||delta||_F / ||W_base||_F, the
singular values of the delta (2-D and fused 3-D expert tensors, flattened to rows x last
axis), their entropy effective rank (Roy & Vetterli: exp of the entropy of s / sum s), and
how concentrated the delta is: the share of its energy (sum of squares) held by the top q
fraction of entries by |delta|. The skill-localization view is the *global* share over
all parameters, reported next to a control: the same statistic for a dense Gaussian delta of
the same per-parameter scale (what "not localised at all" looks like).

Energy (squared entries) rather than L1 mass, so shares add up to the Frobenius norms the
heatmap shows. A zero delta gives zero in every column (eff_rank is NaN only for vectors,
where a rank means nothing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.results import Result

TOP_FRACTIONS = (1e-4, 1e-3, 1e-2)
_EXACT_MAX = 50_000_000  # above this many entries the global top-q threshold is estimated from a sample

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
# (substring, kind), first match wins; order matters (experts before gate, router before gate).
_KINDS: tuple[tuple[str, str], ...] = (
    ("shared_expert_gate", "shared_router"),
    ("shared_expert", "shared_expert"),
    ("experts.gate_up", "experts_gate_up"),
    ("experts.down", "experts_down"),
    ("experts", "experts"),
    ("e_score_correction_bias", "router"),
    ("mlp.gate.", "router"),
    ("mlp.router", "router"),
    ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"),
    ("q_a_proj", "q"), ("q_b_proj", "q"), ("kv_a_proj", "kv"), ("kv_b_proj", "kv"),
    ("c_attn", "qkv"), ("query_key_value", "qkv"), ("attn.c_proj", "o"), ("attention.dense", "o"),
    ("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"),
    ("c_fc", "up"), ("dense_h_to_4h", "up"), ("mlp.c_proj", "down"), ("dense_4h_to_h", "down"),
    ("norm", "norm"), ("ln_", "norm"),
    ("embed_tokens", "embed"), ("wte", "embed"), ("embed_in", "embed"), ("wpe", "pos_embed"),
    ("lm_head", "unembed"), ("embed_out", "unembed"),
)
KIND_ORDER = ("embed", "pos_embed", "q", "k", "v", "kv", "qkv", "o", "gate", "up", "down", "router",
              "experts_gate_up", "experts_down", "experts", "shared_router", "shared_expert", "norm", "unembed")


def module_of(name: str) -> tuple[int, str]:
    """(layer, kind) of an HF parameter name; layer -1 for embeddings, final norm and head."""
    m = _LAYER.search("." + name)
    layer = int(m.group(1)) if m else -1
    for sub, kind in _KINDS:
        if sub in name:
            return layer, kind
    parts = [p for p in name.split(".") if p not in ("weight", "bias")]
    return layer, parts[-1] if parts else name


def effective_rank(s: Tensor) -> float:
    """exp(entropy of s / sum(s)); 0 for an all-zero spectrum."""
    s = s.double()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def top_share(x: Tensor, fraction: float) -> float:
    """Share of sum(x**2) held by the top `fraction` of entries by |x| (at least one entry); 0 if x is 0."""
    a = x.detach().flatten().double().square()
    total = a.sum()
    if total <= 0:
        return 0.0
    k = max(1, math.ceil(fraction * a.numel()))
    return float(torch.topk(a, min(k, a.numel())).values.sum() / total)


def _global_shares(deltas: Sequence[Tensor], fractions: Sequence[float], seed: int = 0) -> list[float]:
    """`top_share` over the concatenation of every delta, without building it when it is huge."""
    n = sum(d.numel() for d in deltas)
    total = sum(float(d.double().square().sum()) for d in deltas)
    if n == 0 or total <= 0:
        return [0.0 for _ in fractions]
    if n <= _EXACT_MAX:
        return [top_share(torch.cat([d.flatten() for d in deltas]), f) for f in fractions]
    # Estimate each threshold from a uniform sample of entries, then sum the energy above it exactly.
    g = torch.Generator().manual_seed(seed)
    sample = torch.cat([d.flatten()[torch.randint(d.numel(), (max(1, 5_000_000 * d.numel() // n),), generator=g)]
                        for d in deltas]).abs().float()
    out = []
    for f in fractions:
        t = torch.quantile(sample[:16_000_000], 1 - f) if f < 1 else sample.min()
        out.append(sum(float(d.double().square()[d.abs() >= t].sum()) for d in deltas) / total)
    return out


@dataclass(frozen=True)
class WeightDiff(Result):
    """Per-parameter weight diff (`frame`), delta spectra, and global concentration vs a control."""

    base: str
    tuned: str
    frame: pd.DataFrame
    spectra: dict = field(default_factory=dict)  # param name -> top singular values (ndarray)
    top_fractions: tuple = TOP_FRACTIONS
    global_share: tuple = ()  # share of all delta energy in the top q of all entries
    control_share: tuple = ()  # the same for a dense Gaussian delta of the same per-parameter scale
    n_params: int = 0
    n_changed: int = 0

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def changed(self) -> list[str]:
        """Names of the parameters whose delta is not exactly zero."""
        return sorted(self.frame.loc[self.frame["delta_norm"] > 0, "name"])

    def concentration(self) -> pd.DataFrame:
        return pd.DataFrame({"top_fraction": list(self.top_fractions), "share": list(self.global_share),
                             "control_share": list(self.control_share)})

    def heatmap(self) -> pd.DataFrame:
        """layer x module relative delta norm: sqrt(sum delta^2) / sqrt(sum W^2) over the cell's parameters."""
        f = self.frame.assign(d2=self.frame["delta_norm"] ** 2, b2=self.frame["base_norm"] ** 2)
        g = f.groupby(["layer", "module"])[["d2", "b2"]].sum()
        rel = np.sqrt(g["d2"]) / np.sqrt(g["b2"]).where(g["b2"] > 0, 1.0)
        tab = rel.unstack("module")
        cols = [k for k in KIND_ORDER if k in tab.columns] + sorted(c for c in tab.columns if c not in KIND_ORDER)
        return tab[cols]

    def plot(self):
        import plotly.graph_objects as go

        tab = self.heatmap()
        ylab = ["emb/head" if i < 0 else f"L{i}" for i in tab.index]
        fig = go.Figure(go.Heatmap(z=tab.to_numpy(dtype=float), x=list(tab.columns), y=ylab, colorscale="Viridis",
                                   colorbar={"title": "|dW|/|W|"}, hoverongaps=False))
        fig.update_layout(title=f"Relative weight change: {self.tuned} vs {self.base}", xaxis_title="module",
                          yaxis_title="layer", yaxis_autorange="reversed")
        return fig

    def plot_spectra(self, top: int = 8):
        """Normalised singular-value spectra of the `top` most changed matrices."""
        import plotly.graph_objects as go

        f = self.frame[self.frame["name"].isin(list(self.spectra))].nlargest(top, "rel_norm")
        fig = go.Figure()
        for name in f["name"]:
            s = np.asarray(self.spectra[name], dtype=float)
            if s.size and s[0] > 0:
                fig.add_trace(go.Scatter(y=s / s[0], mode="lines+markers", name=name))
        fig.update_layout(title="Singular values of the delta (normalised to the largest)", xaxis_title="index",
                          yaxis_title="s_i / s_0", yaxis_type="log")
        return fig

    def plot_concentration(self):
        import plotly.graph_objects as go

        x = [f"top {100 * q:g} %" for q in self.top_fractions]
        fig = go.Figure([go.Bar(x=x, y=list(self.global_share), name=f"{self.tuned} - {self.base}"),
                         go.Bar(x=x, y=list(self.control_share), name="dense Gaussian control")])
        fig.update_layout(title="Share of delta energy in the most changed entries", yaxis_title="share",
                          barmode="group", yaxis_range=[0, 1])
        return fig


def _pairs(pair, include: Callable[[str], bool] | None):
    base, tuned = dict(pair.base.params.items()), dict(pair.tuned.params.items())
    for name, b in base.items():
        if include is not None and not include(name):
            continue
        yield name, b, tuned[name]


@torch.no_grad()
def weight_diff(pair, *, top_fractions: Sequence[float] = TOP_FRACTIONS, spectrum_k: int = 32,
                spectra: bool = True, include: Callable[[str], bool] | None = None, seed: int = 0,
                progress: bool | None = None) -> WeightDiff:
    """Per-parameter relative delta norm, delta spectrum and effective rank, and concentration.

    `include(name)` filters parameters by HF name; `spectra=False` skips the SVDs (large models).
    """
    fr = tuple(float(q) for q in top_fractions)
    if not fr or not all(0 < q <= 1 for q in fr):
        raise ValueError(f"top_fractions: expected fractions in (0, 1], got {top_fractions!r}")
    if spectrum_k < 1:
        raise ValueError(f"spectrum_k: expected >= 1, got {spectrum_k}")
    rows, spec, deltas, controls = [], {}, [], []
    g = torch.Generator().manual_seed(seed)
    items = list(_pairs(pair, include))
    if not items:
        raise ValueError("include: no parameter matched")
    for name, b, t in tqdm(items, desc="weight diff", disable=progress is False, leave=False):
        b, t = b.detach().float(), t.detach().float()
        d = t - b
        layer, kind = module_of(name)
        dn, bn = float(d.norm()), float(b.norm())
        row = {"name": name, "layer": layer, "module": kind, "shape": "x".join(map(str, b.shape)),
               "numel": b.numel(), "delta_norm": dn, "base_norm": bn,
               "rel_norm": dn / bn if bn > 0 else (0.0 if dn == 0 else math.inf),
               "max_abs": float(d.abs().max()) if d.numel() else 0.0, "eff_rank": math.nan}
        if spectra and d.ndim >= 2:
            s = torch.linalg.svdvals(d.reshape(-1, d.shape[-1])) if dn > 0 else torch.zeros(min(d.shape[-1], d.numel() // d.shape[-1]))
            row["eff_rank"] = effective_rank(s)
            spec[name] = s[:spectrum_k].numpy()
        for q in fr:
            row[f"top{100 * q:g}%"] = top_share(d, q)
        rows.append(row)
        deltas.append(d)
        rms = dn / math.sqrt(max(1, d.numel()))
        controls.append(torch.randn(d.shape, generator=g) * rms if rms > 0 else torch.zeros_like(d))
    frame = pd.DataFrame(rows)
    return WeightDiff(base=pair.base.name, tuned=pair.tuned.name, frame=frame, spectra=spec, top_fractions=fr,
                      global_share=tuple(_global_shares(deltas, fr, seed)),
                      control_share=tuple(_global_shares(controls, fr, seed)),
                      n_params=int(frame["numel"].sum()), n_changed=int((frame["delta_norm"] > 0).sum()))


# --- DARE: drop and rescale ------------------------------------------------------------------
@dataclass(frozen=True)
class DareCheck(Result):
    """metric(tuned with a fraction p of its delta dropped) per p, seed and variant.

    `rescaled` is DARE (keep each delta entry with prob 1-p, divide by 1-p); `no_rescale`
    drops without rescaling (the control that shows why the rescale matters).
    """

    base_metric: float
    tuned_metric: float
    frame: pd.DataFrame  # p, seed, variant, metric, change (metric - tuned_metric), recovered

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> pd.DataFrame:
        return self.frame.groupby(["variant", "p"])[["metric", "change", "recovered"]].agg(["mean", "std"])

    def plot(self):
        import plotly.graph_objects as go

        s = self.frame.groupby(["variant", "p"])["metric"].agg(["mean", "std"]).reset_index()
        fig = go.Figure()
        for v, sub in s.groupby("variant"):
            fig.add_trace(go.Scatter(x=sub["p"], y=sub["mean"], error_y={"array": sub["std"].fillna(0)},
                                     mode="lines+markers", name=str(v)))
        fig.add_hline(y=self.tuned_metric, line_dash="dash", annotation_text="tuned")
        fig.add_hline(y=self.base_metric, line_dash="dot", annotation_text="base")
        fig.update_layout(title="DARE: drop a fraction p of the delta", xaxis_title="p (dropped)", yaxis_title="metric")
        return fig


@torch.no_grad()
def dare_check(pair, metric: Callable, *, ps: Sequence[float] = (0.5, 0.9, 0.99), seeds: Sequence[int] = (0, 1, 2),
               include: Callable[[str], bool] | None = None, progress: bool | None = None) -> DareCheck:
    """Drop each delta entry with probability p (rescaling the rest by 1/(1-p)) on the tuned model,
    measure `metric(subject) -> float`, restore the tuned weights exactly. Seeds vary the mask."""
    if not callable(metric):
        raise ValueError("metric: expected a callable metric(subject) -> float")
    ps = tuple(float(p) for p in ps)
    if not ps or not all(0 <= p < 1 for p in ps):
        raise ValueError(f"ps: expected drop probabilities in [0, 1), got {ps!r}")
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    m_base, m_tuned = float(metric(pair.base)), float(metric(pair.tuned))
    live = [(name, b, t) for name, b, t in _pairs(pair, include) if not torch.equal(b, t)]
    saved = [t.detach().clone() for _, _, t in live]
    gain = m_tuned - m_base
    rows = []
    jobs = [(p, s, v) for p in ps for s in seeds for v in ("rescaled", "no_rescale")]
    try:
        for p, seed, variant in tqdm(jobs, desc="DARE", disable=progress is False, leave=False):
            for i, ((_, b, t), orig) in enumerate(zip(live, saved, strict=True)):
                gen = torch.Generator().manual_seed(1_000_003 * int(seed) + i)
                keep = (torch.rand(orig.shape, generator=gen) >= p).to(orig.dtype)
                d = (orig - b.detach()) * keep
                t.copy_(b.detach() + (d / (1 - p) if variant == "rescaled" else d))
            m = float(metric(pair.tuned))
            rows.append({"p": p, "seed": int(seed), "variant": variant, "metric": m, "change": m - m_tuned,
                         "recovered": (m - m_base) / gain if gain != 0 else math.nan})
    finally:
        for (_, _, t), orig in zip(live, saved, strict=True):
            t.copy_(orig)
    return DareCheck(base_metric=m_base, tuned_metric=m_tuned, frame=pd.DataFrame(rows))
