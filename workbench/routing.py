"""Routing capture: which experts each token selects, with what weight, in every MoE layer.

    r = capture_routing(subject, prompts)            # Routing
    r.indices      # layer batch pos top_k  (-1: padding, or a slot a switch dropped)
    r.frequency()  # layer n_experts: share of real tokens that select each expert
    r.per_prompt("weight")  # batch layer n_experts: mean router weight per token

Read with a forward hook on each HF router module (`workbench.engines.routing`), so it does
not depend on `output_router_logits` and sees the routing actually used, switches included.
Dense layers (DeepSeek's first layers, Qwen's `mlp_only_layers`) have no router: they are
skipped and listed in `dense_layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from workbench.engines import routing as R
from workbench.results import Result

Statistic = Literal["count", "weight"]


def check_statistic(statistic: str) -> str:
    if statistic not in ("count", "weight"):
        raise ValueError(f"statistic: expected 'count' or 'weight', got {statistic!r}")
    return statistic


@dataclass(frozen=True)
class Routing(Result):
    """Per-token routing of a batch of inputs (left padded; `attention_mask` marks real tokens)."""

    layers: tuple[int, ...]  # the MoE layers captured, in order (axis 0 of the tensors)
    dense_layers: tuple[int, ...]  # layers without a router: skipped
    n_experts: int
    top_k: int
    indices: Tensor  # layer batch pos top_k, int64; -1 = no expert
    weights: Tensor  # layer batch pos top_k, float32; 0 where no expert
    logits: Tensor  # layer batch pos n_experts, float32 (empty when not kept)
    attention_mask: Tensor  # batch pos
    texts: tuple[str, ...] = ()

    def selection(self, statistic: Statistic = "count") -> Tensor:
        """`layer batch pos n_experts`: 1 (count) or the router weight (weight) per selected expert."""
        check_statistic(statistic)
        idx = self.indices.clamp(min=0)
        val = (self.indices >= 0).float() if statistic == "count" else self.weights.float()
        out = torch.zeros(*self.indices.shape[:-1], self.n_experts)
        return out.scatter_add_(-1, idx, val * (self.indices >= 0))

    def per_prompt(self, statistic: Statistic = "count", mask: Tensor | None = None) -> Tensor:
        """`batch layer n_experts`: the per-token statistic averaged over each row's tokens.

        `mask` (`batch pos` bool) picks the tokens (default: every real token)."""
        m = self.attention_mask.bool() if mask is None else mask.bool() & self.attention_mask.bool()
        if m.shape != self.attention_mask.shape:
            raise ValueError(f"mask: expected shape {tuple(self.attention_mask.shape)}, got {tuple(m.shape)}")
        sel = self.selection(statistic) * m[None, :, :, None]
        n = m.sum(-1).clamp(min=1).float()
        return (sel.sum(2) / n[None, :, None]).permute(1, 0, 2)

    def frequency(self, statistic: Statistic = "count") -> Tensor:
        """`layer n_experts`: over all real tokens, the share selecting each expert (or mean weight)."""
        m = self.attention_mask.bool()
        sel = self.selection(statistic)[:, m]  # layer tokens n_experts
        return sel.mean(1)

    def to_frame(self) -> pd.DataFrame:
        """One row per (text, pos, layer, slot) of a real token: expert and weight."""
        rows = []
        m = self.attention_mask.bool()
        for li, layer in enumerate(self.layers):
            b, p, s = torch.nonzero(m[:, :, None].expand(-1, -1, self.top_k), as_tuple=True)
            e = self.indices[li, b, p, s]
            w = self.weights[li, b, p, s]
            rows.append(pd.DataFrame({"row": b.numpy(), "pos": p.numpy(), "layer": layer, "slot": s.numpy(),
                                      "expert": e.numpy(), "weight": w.float().numpy()}))
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def plot(self, statistic: Statistic = "count"):
        import plotly.express as px

        f = self.frequency(statistic).numpy()
        label = "share of tokens" if statistic == "count" else "mean weight"
        return px.imshow(f, x=[f"e{e}" for e in range(self.n_experts)], y=[f"L{ly}" for ly in self.layers],
                         labels={"x": "expert", "y": "layer", "color": label}, aspect="auto",
                         title=f"Expert routing ({label}); dense layers skipped: {list(self.dense_layers)}")


def _pad_left(t: Tensor, length: int, value) -> Tensor:
    """Left-pad axis 2 (pos) of a `layer batch pos ...` tensor (or axis 1 of `batch pos`)."""
    axis = 2 if t.ndim >= 3 else 1
    extra = length - t.shape[axis]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[axis] = extra
    return torch.cat([torch.full(shape, value, dtype=t.dtype), t], axis)


def _route_batch(subject, t, layers: tuple[int, ...], keep_logits: bool):
    b, p = t.input_ids.shape
    got: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def keep(logits, w, idx, layer):
        # Routers see the tokens flattened (batch * pos); HF keeps batch-major order.
        got[layer] = (logits.detach().float().reshape(b, p, -1).cpu() if keep_logits else torch.empty(0),
                      w.detach().float().reshape(b, p, -1).cpu(), idx.detach().reshape(b, p, -1).cpu())

    with R.router_hooks(subject, {ly: (lambda lg, w, ix, ly=ly: keep(lg, w, ix, ly)) for ly in layers}):
        subject.forward(t)
    mask = t.attention_mask.cpu()
    idx = torch.stack([got[ly][2] for ly in layers])
    idx = torch.where(idx >= subject.arch.n_experts, -1, idx)  # a dropped slot: no expert
    real = mask.bool()[None, :, :, None]
    idx = idx.masked_fill(~real, -1)
    w = torch.stack([got[ly][1] for ly in layers]).masked_fill(~real | (idx < 0), 0.0)
    lg = torch.stack([got[ly][0] for ly in layers]).masked_fill(~real, 0.0) if keep_logits else torch.empty(0)
    return idx, w, lg, mask


@torch.no_grad()
def capture_routing(subject, inputs: Any, *, layers: Sequence[int] | None = None, batch_size: int = 64,
                    keep_logits: bool = True, progress: bool | None = None) -> Routing:
    """Routing of every token of `inputs` (texts or Tokens) at `layers` (default: every MoE layer).

    Any active intervention or expert switch applies, so this shows the routing actually used.
    """
    R.check_moe(subject)
    a = subject.arch
    layers = tuple(a.moe_layers) if layers is None else tuple(R.check_layer(subject, ly, name="layers")
                                                              for ly in layers)
    if not layers:
        raise ValueError("layers: expected at least one MoE layer")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    texts = (inputs,) if isinstance(inputs, str) else tuple(inputs) if isinstance(inputs, (list, tuple)) and \
        inputs and all(isinstance(x, str) for x in inputs) else ()
    toks = subject.as_tokens(list(texts) if texts else inputs)
    chunks = range(0, len(toks), batch_size)
    show = progress if progress is not None else len(chunks) > 4
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for i in tqdm(chunks, desc="routing", disable=not show, leave=False):
        parts.append(_route_batch(subject, toks[i:i + batch_size], layers, keep_logits))
    length = max(x[3].shape[1] for x in parts)
    idx = torch.cat([_pad_left(x[0], length, -1) for x in parts], 1)
    w = torch.cat([_pad_left(x[1], length, 0.0) for x in parts], 1)
    lg = torch.cat([_pad_left(x[2], length, 0.0) for x in parts], 1) if keep_logits else torch.empty(0)
    mask = torch.cat([_pad_left(x[3], length, 0) for x in parts], 0)
    return Routing(layers=layers, dense_layers=tuple(a.dense_layers), n_experts=a.n_experts, top_k=a.top_k,
                   indices=idx, weights=w, logits=lg, attention_mask=mask, texts=texts)
