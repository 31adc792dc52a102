"""Logit lens of one model or a pair, and the lens of the (tuned - base) difference.

    ll = logit_lens(subject_or_pair, "the apple is in box f")     # top tokens per layer and position
    dl = diff_lens(pair, texts)                                  # which tokens the fine-tune pushes up

`logit_lens` reads each layer's `resid_post` through the model's own final norm and
unembedding (and Gemma's final logit soft-cap), so its last layer equals the model's logits.

`diff_lens` applies the *base* model's read-out to both residual streams and takes the
difference of the normalised streams, `W_U (N(h_tuned) - N(h_base))` averaged over tokens:
- the final norm *is* applied, to each stream separately, because it is what the unembedding
  actually reads: the raw residual norm grows with depth, so without it later layers would
  dominate by scale, not by content; normalising the raw difference instead would blow a tiny
  change up to unit size (the RMS of a difference is not the RMS the model divides by);
- one read-out (the base model's) for both, so the view isolates what changed in the residual
  stream; a changed head shows up in `weight_diff` (module `norm`/`unembed`);
- the soft-cap of Gemma is not applied (it acts on logits, not on a difference).
Since W_U is linear, this is the mean difference of the two logit lenses under the base head.
It also reports a PCA of the raw per-token differences per layer (is the change one direction?)
and, for mixture-of-experts pairs, each model's expert usage per MoE layer and the shift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from workbench.diff_acts import batches, check_texts, run_both
from workbench.diff_weights import module_of
from workbench.results import Result
from workbench.sites import Site

try:  # routing capture (one hook per router module); the fallback below reads router hooks itself
    from workbench.routing import capture_routing

    _HAS_CAPTURE = True
except ImportError:  # pragma: no cover - an older checkout without workbench.routing
    _HAS_CAPTURE = False


# --- the read-out -------------------------------------------------------------------------------
def _owner(model: nn.Module, param: nn.Parameter) -> nn.Module:
    for m in model.modules():
        if any(p is param for p in m.parameters(recurse=False)):
            return m
    raise ValueError("lens: could not find the module that owns the final norm")


def final_norm(subject) -> nn.Module:
    """The HF final norm module (found through its parameter: engines re-parent modules)."""
    cache = subject.__dict__.setdefault("_wb_lens", {})
    if "norm" not in cache:
        names = [n for n in subject.params.names() if module_of(n) == (-1, "norm") and n.endswith("weight")]
        if not names:
            raise ValueError(f"lens: {subject.name!r} ({subject.arch.family}) has no final norm parameter; "
                             f"parameters outside the layers: {[n for n in subject.params.names() if module_of(n)[0] < 0]}")
        cache["norm"] = _owner(subject.hf_model, subject.params[names[-1]])
    return cache["norm"]


def unembedding(subject) -> tuple[Tensor, Tensor | None]:
    """(W_U `d_vocab d_model`, bias or None) of the HF output embedding."""
    out = subject.hf_model.get_output_embeddings()
    w = out.weight
    b = getattr(out, "bias", None)
    return w.detach(), (b.detach() if isinstance(b, Tensor) else None)


def readout(subject, resid: Tensor, *, softcap: bool = True) -> Tensor:
    """Logits `... d_vocab` of residual vectors through the final norm and unembedding."""
    w, b = unembedding(subject)
    x = final_norm(subject)(resid.to(w.dtype)) @ w.T
    if b is not None:
        x = x + b
    cap = getattr(subject.hf_model.config, "final_logit_softcapping", None)
    if softcap and cap:
        x = torch.tanh(x / cap) * cap
    return x


def token_strings(tokenizer, ids) -> list[str]:
    """Token strings of ids; ids past the tokenizer's vocabulary (padded model vocabularies) as `<id>`."""
    ids = [int(i) for i in ids]
    return [t if t is not None else f"<{i}>" for i, t in zip(ids, tokenizer.convert_ids_to_tokens(ids), strict=True)]


# --- logit lens ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogitLens(Result):
    models: tuple  # model names (one, or base and tuned)
    tokens: list  # token strings of the text
    top_ids: np.ndarray  # [model layer pos k]
    top_probs: np.ndarray  # [model layer pos k]
    top_tokens: list  # [model][layer][pos][k] strings
    next_prob: np.ndarray  # [model layer pos] probability of the actual next token (NaN at the end)

    def to_frame(self) -> pd.DataFrame:
        rows = []
        M, L, P, K = self.top_ids.shape
        for m in range(M):
            for layer in range(L):
                for p in range(P):
                    for r in range(K):
                        rows.append({"model": self.models[m], "layer": layer, "pos": p, "input": self.tokens[p],
                                     "rank": r, "token": self.top_tokens[m][layer][p][r],
                                     "prob": float(self.top_probs[m, layer, p, r]),
                                     "next_prob": float(self.next_prob[m, layer, p])})
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        M, L, P, _ = self.top_ids.shape
        fig = make_subplots(rows=1, cols=M, subplot_titles=list(self.models), horizontal_spacing=0.06)
        x = [f"{p}:{t}" for p, t in enumerate(self.tokens)]
        for m in range(M):
            text = [[self.top_tokens[m][layer][p][0] for p in range(P)] for layer in range(L)]
            fig.add_trace(go.Heatmap(z=self.top_probs[m, :, :, 0], x=x, y=[f"L{i}" for i in range(L)], text=text,
                                     texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
                                     showscale=m == M - 1, colorbar={"title": "p(top-1)"}), row=1, col=m + 1)
        fig.update_layout(title="Logit lens: top token per layer (rows) and position (columns)",
                          height=120 + 40 * L)
        fig.update_yaxes(autorange="reversed")
        return fig


@torch.no_grad()
def logit_lens(subject_or_pair, text: str, *, k: int = 5) -> LogitLens:
    """Top-`k` tokens of every layer's `resid_post` at every position of `text`, for a Subject or
    for both models of a ModelPair (each through its own final norm and unembedding)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: expected a non-empty string")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    subjects = list(subject_or_pair) if hasattr(subject_or_pair, "tuned") else [subject_or_pair]
    first = subjects[0]
    toks = first.tokenize([text])
    ids = toks.input_ids[0]
    sites = [Site(layer, "resid_post") for layer in range(first.arch.n_layers)]
    k = min(k, first.arch.d_vocab)
    tid, tpr, nxt, tts = [], [], [], []
    for s in subjects:
        _, cache = s.run(toks, cache=sites)
        h = torch.stack([cache[site][0] for site in sites])  # layer pos d_model
        probs = torch.softmax(readout(s, h).double(), -1)
        top = probs.topk(k, dim=-1)
        nx = torch.full(probs.shape[:2], float("nan"), dtype=torch.float64)
        nx[:, :-1] = probs[:, :-1].gather(-1, ids[1:].expand(len(sites), -1)[..., None])[..., 0]
        tid.append(top.indices.numpy())
        tpr.append(top.values.float().numpy())
        nxt.append(nx.float().numpy())
        tts.append([[token_strings(s.tokenizer, row) for row in layer] for layer in top.indices])
    return LogitLens(models=tuple(s.name for s in subjects), tokens=token_strings(first.tokenizer, ids),
                     top_ids=np.stack(tid), top_probs=np.stack(tpr), top_tokens=tts, next_prob=np.stack(nxt))


# --- diff lens ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffLens(Result):
    base: str
    tuned: str
    layers: tuple
    logit_diff: np.ndarray  # [layer vocab] mean over tokens of W_U (N(h_tuned) - N(h_base))
    promoted: list  # per layer: top-k token strings by logit_diff
    suppressed: list  # per layer: bottom-k token strings
    explained: np.ndarray  # [layer n_components] explained-variance ratio of the raw differences
    diff_ratio: np.ndarray  # [layer] mean |h_tuned - h_base| / mean |h_base|
    moe_layers: tuple = ()
    usage_base: np.ndarray | None = None  # [moe_layer expert] share of routed slots
    usage_tuned: np.ndarray | None = None
    n_tokens: int = 0

    @property
    def usage_shift(self) -> np.ndarray | None:
        ub, ut = self.usage_base, self.usage_tuned
        return None if ub is None or ut is None else ut - ub

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for i, layer in enumerate(self.layers):
            d = self.logit_diff[i]
            for r, tok in enumerate(self.promoted[i]):
                rows.append({"layer": layer, "direction": "promoted", "rank": r, "token": tok,
                             "logit_diff": float(np.sort(d)[::-1][r])})
            for r, tok in enumerate(self.suppressed[i]):
                rows.append({"layer": layer, "direction": "suppressed", "rank": r, "token": tok,
                             "logit_diff": float(np.sort(d)[r])})
        return pd.DataFrame(rows)

    def pca_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"layer": layer, "component": c, "explained": float(self.explained[i, c]),
                              "diff_ratio": float(self.diff_ratio[i])}
                             for i, layer in enumerate(self.layers) for c in range(self.explained.shape[1])])

    def experts_frame(self) -> pd.DataFrame:
        ub, ut = self.usage_base, self.usage_tuned
        if ub is None or ut is None:
            return pd.DataFrame(columns=["layer", "expert", "base", "tuned", "shift"])
        return pd.DataFrame([{"layer": layer, "expert": e, "base": float(ub[i, e]), "tuned": float(ut[i, e]),
                              "shift": float(ut[i, e] - ub[i, e])}
                             for i, layer in enumerate(self.moe_layers) for e in range(ub.shape[1])])

    def plot(self):
        import plotly.graph_objects as go

        k = len(self.promoted[0]) if self.promoted else 0
        z = np.stack([np.sort(d)[::-1][:k] for d in self.logit_diff]) if k else np.zeros((len(self.layers), 0))
        fig = go.Figure(go.Heatmap(z=z, x=[f"#{r + 1}" for r in range(k)], y=[f"L{i}" for i in self.layers],
                                   text=self.promoted, texttemplate="%{text}", colorscale="Reds",
                                   colorbar={"title": "logit diff"}))
        fig.update_layout(title="Diff lens: tokens the fine-tune pushes up, per layer", xaxis_title="rank",
                          yaxis_autorange="reversed")
        return fig

    def plot_pca(self):
        import plotly.graph_objects as go

        fig = go.Figure([go.Bar(x=[f"L{i}" for i in self.layers], y=self.explained[:, c], name=f"PC{c + 1}")
                         for c in range(self.explained.shape[1])])
        fig.update_layout(title="PCA of per-token (tuned - base) residual differences: explained variance",
                          barmode="stack", yaxis_title="explained variance ratio", yaxis_range=[0, 1])
        return fig

    def plot_experts(self):
        import plotly.graph_objects as go

        shift = self.usage_shift
        if shift is None:
            raise ValueError("plot_experts: this pair has no mixture-of-experts layers")
        m = float(np.abs(shift).max()) or 1.0
        fig = go.Figure(go.Heatmap(z=shift, x=[f"E{e}" for e in range(shift.shape[1])],
                                   y=[f"L{i}" for i in self.moe_layers], colorscale="RdBu", zmid=0, zmin=-m, zmax=m,
                                   colorbar={"title": "usage shift"}))
        fig.update_layout(title="Expert usage shift (tuned - base): share of routed slots",
                          yaxis_autorange="reversed")
        return fig


def _chosen_experts(subject, toks, layers: Sequence[int]) -> dict[int, Tensor]:
    """Each MoE layer's chosen expert ids, `tokens top_k` over the flattened batch.

    Read from the router module's own top-k (workbench.engines.routing), so the ids are the
    routing actually used; for a family that module does not cover, from the `router_logits`
    site with a softmax top-k (HF's rule for softmax routers).
    """
    sink: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    try:
        from workbench.engines.routing import check_moe, router_hooks

        check_moe(subject)
    except (ImportError, ValueError):
        router_hooks = None
    if router_hooks is not None:
        def reader(layer: int) -> Callable:
            def fn(logits, w, idx):
                sink[layer].append(idx.detach())

            return fn

        with router_hooks(subject, {layer: reader(layer) for layer in layers}):
            subject.run(toks)
    else:
        k = subject.arch.top_k

        def reader(layer: int) -> Callable:
            def fn(x):
                sink[layer].append(x.reshape(-1, x.shape[-1]).topk(k, dim=-1).indices)

            return fn

        subject.run(toks, hooks=[(Site(layer, "router_logits"), reader(layer)) for layer in layers])
    return {layer: v[0] for layer, v in sink.items()}


def _share(counts: Tensor) -> np.ndarray:
    """Counts of routed slots per (layer, expert) -> share of that layer's routed slots."""
    return (counts / counts.sum(-1, keepdim=True).clamp(min=1e-30)).numpy()


@torch.no_grad()
def _usage(subject, toks, layers: Sequence[int], counts: Tensor) -> None:
    chosen = _chosen_experts(subject, toks, layers)
    keep = toks.attention_mask.bool().flatten()
    n = subject.arch.n_experts
    for i, layer in enumerate(layers):
        idx = chosen[layer].reshape(keep.shape[0], -1)[keep].flatten()
        counts[i] += torch.bincount(idx[idx < n], minlength=n)[:n].double()


@torch.no_grad()
def diff_lens(pair, texts: Sequence[str] | str, *, k: int = 10, n_components: int = 3, batch_size: int = 16,
              max_tokens: int = 4096, progress: bool | None = None) -> DiffLens:
    """Mean logit-lens difference per layer (base read-out, see the module docstring), PCA of the
    per-token residual differences, and for MoE pairs the expert-usage shift per layer."""
    texts = check_texts(texts)
    if k < 1 or n_components < 1:
        raise ValueError(f"k, n_components: expected >= 1, got {k}, {n_components}")
    a = pair.arch
    layers = list(range(a.n_layers))
    moe = [layer for layer in a.moe_layers] if a.is_moe else []
    norm = final_norm(pair.base)
    w, _ = unembedding(pair.base)
    sum_normed = torch.zeros(len(layers), a.d_model, dtype=torch.float64)
    sum_dnorm = torch.zeros(len(layers), dtype=torch.float64)
    sum_bnorm = torch.zeros(len(layers), dtype=torch.float64)
    raw: list[list[Tensor]] = [[] for _ in layers]
    counts = {"base": torch.zeros(len(moe), a.n_experts, dtype=torch.float64),
              "tuned": torch.zeros(len(moe), a.n_experts, dtype=torch.float64)}
    n = 0
    for chunk in tqdm(list(batches(texts, batch_size)), desc="diff lens", disable=progress is False, leave=False):
        toks, (_, cb), (_, ct) = run_both(pair, chunk, layers)
        m = toks.attention_mask.bool()
        n += int(m.sum())
        for i, (hb, ht) in enumerate(zip(cb, ct, strict=True)):
            hb, ht = hb[m].to(w.dtype), ht[m].to(w.dtype)
            sum_normed[i] += (norm(ht) - norm(hb)).double().sum(0)
            d = (ht - hb).double()
            sum_dnorm[i] += d.norm(dim=-1).sum()
            sum_bnorm[i] += hb.double().norm(dim=-1).sum()
            raw[i].append(d.float())
        if moe and not _HAS_CAPTURE:
            _usage(pair.base, toks, moe, counts["base"])
            _usage(pair.tuned, toks, moe, counts["tuned"])
    if moe and _HAS_CAPTURE:  # the routing actually used, switches included (workbench.routing)
        for role, s in (("base", pair.base), ("tuned", pair.tuned)):
            r = capture_routing(s, texts, layers=moe, batch_size=batch_size, keep_logits=False, progress=False)
            counts[role] += r.frequency("count").double()
    logit_diff = ((sum_normed / max(n, 1)).to(w.dtype) @ w.T).double().numpy()
    kk = min(k, a.d_vocab)
    tok = pair.base.tokenizer
    promoted = [token_strings(tok, np.argsort(-d, kind="stable")[:kk]) for d in logit_diff]
    suppressed = [token_strings(tok, np.argsort(d, kind="stable")[:kk]) for d in logit_diff]
    explained = np.zeros((len(layers), n_components))
    for i in range(len(layers)):
        d = torch.cat(raw[i])[:max_tokens].double()
        d = d - d.mean(0)
        var = d.square().sum()
        if var > 0:
            s = torch.linalg.svdvals(d)
            ev = (s.square() / var).numpy()[:n_components]
            explained[i, :len(ev)] = ev
    ub = ut = None
    if moe:
        ub, ut = _share(counts["base"]), _share(counts["tuned"])
    ratio = (sum_dnorm / sum_bnorm.clamp(min=1e-30)).numpy()
    return DiffLens(base=pair.base.name, tuned=pair.tuned.name, layers=tuple(layers), logit_diff=logit_diff,
                    promoted=promoted, suppressed=suppressed, explained=explained, diff_ratio=ratio,
                    moe_layers=tuple(moe), usage_base=ub, usage_tuned=ut, n_tokens=n)
