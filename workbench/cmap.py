"""Cross-model activation patching, CMAP (Prakash et al. 2024), for a ModelPair.

The same prompt goes through the tuned and the base model; in the *base* model chosen
components are replaced by the tuned model's values and everything downstream (the base's own
W_O, MLPs, later heads) recomputes. If a group's tuned activations carry the improvement,
patching just that group moves base accuracy toward the tuned model's.

Variants: "z" (head outputs at their group's position: the default), "qkv" (a head's query at
its group position and its key/value at every position up to it: what it reads, not what it
writes), and whole-layer sweeps of `attn_out` / `mlp_out` at every position.
recovery = (patched - base) / (tuned - base), the share of the accuracy gap closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor

from workbench.circuits import Circuit, accuracy
from workbench.engines.tl_patching import raw_name, run_raw
from workbench.path_patching import positions_tensor
from workbench.results import Result
from workbench.sites import Site


def _check_pair(pair) -> None:
    from workbench.models import ModelPair

    if not isinstance(pair, ModelPair):
        raise ValueError(f"pair: expected a workbench.ModelPair(base, tuned), got {type(pair).__name__}")
    a, b = pair.base.arch, pair.tuned.arch
    if a != b:  # ModelPair checks this too; a hand-built pair must not slip through
        raise ValueError(f"pair: base and tuned architectures differ ({a} vs {b}); CMAP needs one architecture")


@dataclass(frozen=True)
class CMAPResult(Result):
    """Accuracy of the base model with each component set patched from the tuned model."""

    variant: str
    base_accuracy: float
    tuned_accuracy: float
    rows: tuple  # (name, n_components, accuracy)

    def recovery(self, acc: float) -> float:
        gap = self.tuned_accuracy - self.base_accuracy
        return (acc - self.base_accuracy) / gap if gap != 0 else float("nan")

    def to_frame(self) -> pd.DataFrame:
        rows = [{"patched": "none (base)", "size": 0, "accuracy": self.base_accuracy},
                {"patched": "tuned alone", "size": 0, "accuracy": self.tuned_accuracy}]
        rows += [{"patched": n, "size": k, "accuracy": a} for n, k, a in self.rows]
        df = pd.DataFrame(rows)
        df["recovery"] = [self.recovery(a) for a in df["accuracy"]]
        df["variant"] = self.variant
        return df

    def plot(self):
        import plotly.express as px

        df = self.to_frame()
        fig = px.bar(df, x="patched", y="accuracy", text=df["recovery"].map(lambda r: f"{r:.0%}"),
                     title=f"CMAP ({self.variant}): tuned -> base; label = recovered share of the gap")
        fig.add_hline(y=self.base_accuracy, line_dash="dot")
        fig.add_hline(y=self.tuned_accuracy, line_dash="dash")
        return fig


def _z_hooks(tuned_z, heads, positions, B, P):
    by_layer: dict[int, list[tuple[int, Tensor]]] = {}
    for layer, h, key in heads:
        by_layer.setdefault(layer, []).append((h, positions_tensor(positions[key], B, P, key)))
    ar = torch.arange(B)

    def fn(x, layer):
        x = x.clone()
        for h, pos in by_layer[layer]:
            x[ar, pos, h] = tuned_z[layer][ar, pos, h]
        return x

    return [(Site(layer, "z"), lambda x, layer=layer: fn(x, layer)) for layer in by_layer]


def _qkv_raw(tuned_qkv, heads, positions, B, P, group):
    """q of each head at its position; k, v of its kv head at every position up to it."""
    writes: dict[str, list[tuple[int, Tensor, bool]]] = {}
    for layer, h, key in heads:
        pos = positions_tensor(positions[key], B, P, key)
        writes.setdefault(raw_name(layer, "q"), []).append((h, pos, False))
        for kind in ("k", "v"):
            writes.setdefault(raw_name(layer, kind), []).append((h // group, pos, True))
    ar = torch.arange(B)

    def fn(x, name):
        x = x.clone()
        src = tuned_qkv[name]
        for h, pos, upto in writes[name]:
            if upto:
                m = (torch.arange(P)[None, :] <= pos[:, None])[..., None]  # batch pos 1
                x[:, :, h] = torch.where(m, src[:, :, h], x[:, :, h])
            else:
                x[ar, pos, h] = src[ar, pos, h]
        return x

    return [(n, lambda x, n=n: fn(x, n)) for n in writes]


@torch.no_grad()
def cmap(pair, prompts: Any, answers: Any, circuit: Circuit, positions: dict, *,
         variant: Literal["z", "qkv"] = "z") -> CMAPResult:
    """Patch each group of `circuit` (and the whole circuit) from tuned into base; accuracy of each."""
    _check_pair(pair)
    if variant not in ("z", "qkv"):
        raise ValueError(f"variant: expected 'z' or 'qkv', got {variant!r}")
    if not isinstance(circuit, Circuit) or circuit.size == 0:
        raise ValueError("circuit: expected a non-empty workbench.circuits.Circuit")
    base, tuned = pair.base, pair.tuned
    toks = base.as_tokens(prompts)
    B, P = toks.input_ids.shape
    ans = torch.as_tensor(answers).long()
    if ans.shape[0] != B:
        raise ValueError(f"answers: expected {B} answer ids, got {ans.shape[0]}")
    base_acc, tuned_acc = accuracy(base, toks, ans), accuracy(tuned, toks, ans)
    a = base.arch
    sets = [(f"group {g}", circuit.only(g)) for g in circuit.groups] + [("full circuit", circuit)]
    rows = []
    if variant == "z":
        _, cache = tuned.run(toks, cache=[Site(layer, "z") for layer in range(a.n_layers)])
        tz = {s.layer: v for s, v in cache.items()}
        for name, c in sets:
            rows.append((name, c.size, accuracy(base, toks, ans, _z_hooks(tz, c.heads, positions, B, P))))
    else:
        names = [raw_name(layer, kind) for layer in range(a.n_layers) for kind in ("q", "k", "v")]
        seen: dict[str, Tensor] = {}
        run_raw(tuned, toks.input_ids, toks.attention_mask,
                raw=[(n, lambda x, n=n: seen.__setitem__(n, x.clone())) for n in names])
        group = a.n_heads // a.n_kv_heads
        for name, c in sets:
            logits = run_raw(base, toks.input_ids, toks.attention_mask,
                             raw=_qkv_raw(seen, c.heads, positions, B, P, group))
            rows.append((name, c.size, float((logits[:, -1].argmax(-1) == ans).float().mean())))
    return CMAPResult(variant, base_acc, tuned_acc, tuple(rows))


@torch.no_grad()
def cmap_layers(pair, prompts: Any, answers: Any, *, component: Literal["attn_out", "mlp_out"] = "attn_out"
                ) -> CMAPResult:
    """Patch one whole layer's `attn_out` (or `mlp_out`) at every position from tuned into base."""
    _check_pair(pair)
    if component not in ("attn_out", "mlp_out"):
        raise ValueError(f"component: expected 'attn_out' or 'mlp_out', got {component!r}")
    base, tuned = pair.base, pair.tuned
    toks = base.as_tokens(prompts)
    ans = torch.as_tensor(answers).long()
    if ans.shape[0] != toks.input_ids.shape[0]:
        raise ValueError(f"answers: expected {toks.input_ids.shape[0]} answer ids, got {ans.shape[0]}")
    sites = base.sites(component)
    _, cache = tuned.run(toks, cache=sites)
    rows = tuple((str(s), 1, accuracy(base, toks, ans, [(s, lambda x, v=cache[s]: v)])) for s in sites)
    return CMAPResult(f"layers:{component}", accuracy(base, toks, ans), accuracy(tuned, toks, ans), rows)
