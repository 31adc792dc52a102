"""Mixture-of-experts routing mechanics: find each layer's router, re-route with its own rules.

In transformers 5 every supported MoE block calls a router module that returns
`(logits, top-k weights, top-k indices)` over the flattened tokens, and fused experts that
skip any index equal to `num_experts` (HF's "sentinel" slot). So reading and changing the
selection needs only a forward hook on the HF router module:

- reading: the hook sees the three tensors, whatever `output_router_logits` says;
- changing: the hook returns new `(weights, indices)` computed from the router's own logits
  with that family's rules (`route`), or with a slot dropped (`drop`).

The router is found as the module that owns the router weight Parameter (`subject.params`
records HF names before an engine re-parents modules), so the same hook works under the
TransformerLens bridge (which keeps the HF router as `_original_component`, and whose own
`hook_expert_*` points are missing for some families, e.g. DeepSeek) and under nnsight (which
runs the HF modules as they are). Remote nnsight execution cannot run local hooks.

Family rules (mirrored op for op, so an untouched token routes bit-identically):
- softmax routers (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): p = softmax(logits); top-k of p;
  weights = the chosen p, renormalised always (Mixtral) or if `norm_topk_prob` (others).
  Qwen's shared expert sits outside the router and is never touched.
- sigmoid routers (DeepSeek-V3): s = sigmoid(logits); choice = s + e_score_correction_bias
  (selection only); top-`topk_group` groups by the sum of each group's two best choices;
  top-k within them; weights = the unbiased s of the chosen, renormalised if `norm_topk_prob`,
  times `routed_scaling_factor`.

Switch semantics:
- `mask` (before selection): a masked softmax logit is set to a large finite negative (so the
  softmax mass moves to the others and the next expert takes the slot); a masked sigmoid choice
  score likewise (never -inf: a group holding it must still be scorable by its other experts);
- `force` (on): the selection score gets a large bonus, so the expert is always selected; its
  weight is its own routing weight, like DeepSeek's correction bias (selection only), unless
  `force_bias` adds to the forced experts' router logits first (MoTE's "add a bias": a larger
  probability or score, so a larger weight; with softmax routers the others' shrink);
- `drop` (after selection, the MoTE default): the slot's index becomes the sentinel (the
  expert is not computed) and the remaining weights are rescaled to the token's original total
  routed weight (1 for renormalising routers). A token whose every slot is dropped gets none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

SOFTMAX_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
SIGMOID_FAMILIES = ("deepseek_v3",)
FAMILIES = SOFTMAX_FAMILIES + SIGMOID_FAMILIES
_MASK = -1e9  # finite: no inf ever enters a group score or a softmax row
_FORCE = 1e6


@dataclass(frozen=True)
class RouterSpec:
    """One router's rules, read off the HF module (`route` applies them)."""

    layer: int
    family: str
    kind: str  # "softmax" | "sigmoid"
    n_experts: int
    top_k: int
    renorm: bool
    scale: float = 1.0
    n_group: int = 1
    topk_group: int = 1

    def group_of(self, expert: int) -> int:
        return expert // (self.n_experts // self.n_group)


# --- finding routers -------------------------------------------------------------------------
def _owner(model: nn.Module, param: nn.Parameter) -> nn.Module:
    for m in model.modules():
        if any(p is param for p in m.parameters(recurse=False)):
            return m
    raise ValueError("routing: could not find the module that owns the router weight")


def check_moe(subject) -> None:
    """A clear error for a model without routed experts or a family we cannot re-route."""
    a = subject.arch
    if not a.is_moe:
        raise ValueError(f"subject: {subject.name!r} ({a.family}) is not a mixture-of-experts model; "
                         f"expert routing needs one of {list(FAMILIES)}")
    if a.family not in FAMILIES:
        raise ValueError(f"subject: routing rules for the {a.family!r} family are not implemented; "
                         f"supported: {list(FAMILIES)}")
    if getattr(subject.engine, "remote", False):
        raise ValueError("subject: expert routing runs as local hooks on the router modules, which a remote "
                         "(NDIF) execution cannot carry; load the model locally")


def check_layer(subject, layer: int, *, name: str = "layer") -> int:
    a = subject.arch
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise ValueError(f"{name}: expected an int layer index, got {layer!r}")
    if not 0 <= layer < a.n_layers:
        raise ValueError(f"{name}: layer {layer} out of range; valid 0..{a.n_layers - 1} "
                         f"(MoE layers: {list(a.moe_layers)})")
    if layer not in a.moe_layers:
        raise ValueError(f"{name}: layer {layer} is a dense layer (no router, nothing to switch); "
                         f"MoE layers: {list(a.moe_layers)}")
    return layer


def router(subject, layer: int) -> nn.Module:
    """The HF router module of an MoE layer (cached on the subject)."""
    return _routers(subject, layer)[0]


def hook_module(subject, layer: int) -> nn.Module:
    """Where routing hooks go: the outermost module whose call returns the router's tuple.

    Under the TransformerLens bridge that is the `MoERouterBridge` wrapping the HF router: it
    scatters the top-k weights into an `n_experts` vector by index, which a dropped slot's
    sentinel index (== n_experts) would overflow, so we re-route *after* it. (Its own
    `hook_expert_*` points therefore show the router's choice before a switch.) nnsight and
    plain HF run the HF router itself.
    """
    return _routers(subject, layer)[1]


def _routers(subject, layer: int) -> tuple[nn.Module, nn.Module]:
    check_moe(subject)
    check_layer(subject, layer)
    cache = subject.__dict__.setdefault("_wb_routers", {})
    if layer not in cache:
        inner = _owner(subject.hf_model, subject.params[_router_param(subject, layer)])
        wrapper = {id(m._modules["_original_component"]): m for m in subject.hf_model.modules()
                   if m._modules.get("_original_component") is not None}
        outer = inner
        while id(outer) in wrapper:
            outer = wrapper[id(outer)]
        cache[layer] = (inner, outer)
    return cache[layer]


def _router_param(subject, layer: int) -> str:
    for tpl in ("model.layers.{l}.mlp.gate.weight", "model.layers.{l}.mlp.router.weight"):
        if tpl.format(l=layer) in subject.params:
            return tpl.format(l=layer)
    raise ValueError(f"layer {layer}: no router weight found (expected 'model.layers.{layer}.mlp.gate.weight')")


def spec(subject, layer: int) -> RouterSpec:
    m = router(subject, layer)
    fam = subject.arch.family
    n, k = int(m.num_experts), int(m.top_k)
    if fam in SIGMOID_FAMILIES:
        return RouterSpec(layer, fam, "sigmoid", n, k, bool(m.norm_topk_prob), float(m.routed_scaling_factor),
                          int(m.num_group), int(m.topk_group))
    renorm = True if fam == "mixtral" else bool(m.norm_topk_prob)
    return RouterSpec(layer, fam, "softmax", n, k, renorm)


# --- the rules -----------------------------------------------------------------------------
def route(sp: RouterSpec, logits: Tensor, module: nn.Module | None = None, *, mask: Tensor | None = None,
          force: Tensor | None = None, force_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-k weights and indices (`tokens top_k`) from router logits (`tokens n_experts`).

    `mask`/`force`: bool `n_experts` (or `tokens n_experts`); `force_bias`: float `n_experts`,
    added to the logits before the probabilities/scores (0 off the forced experts). With none,
    this is HF's router op for op (tested bit-exact against every family).
    """
    changed = mask is not None or force is not None
    if force_bias is not None:
        logits = logits + force_bias.to(logits.dtype)
    if sp.kind == "softmax":
        if sp.family == "mixtral":
            probs = torch.softmax((logits if mask is None else logits.masked_fill(mask, _MASK)).float(), dim=-1)
        else:
            probs = torch.softmax(logits if mask is None else logits.masked_fill(mask, _MASK), dtype=torch.float,
                                  dim=-1)
        if not changed:
            top, idx = torch.topk(probs, sp.top_k, dim=-1)
        else:
            sel = probs
            if force is not None:
                sel = sel + force.to(sel.dtype) * 2.0  # probs <= 1: any forced expert outranks all others
            if mask is not None:
                sel = sel.masked_fill(mask, -1.0)
            idx = torch.topk(sel, sp.top_k, dim=-1)[1]
            top = probs.gather(-1, idx)
        if sp.renorm:
            top /= top.sum(dim=-1, keepdim=True)
        return (top if sp.family == "mixtral" else top.to(logits.dtype)), idx
    # sigmoid, group-limited (DeepSeek-V3)
    bias = cast(Tensor, module.e_score_correction_bias) if module is not None else torch.zeros(sp.n_experts)
    scores = logits.sigmoid()
    choice = scores + bias
    if mask is not None:
        choice = choice.masked_fill(mask, _MASK)
    if force is not None:
        choice = choice + force.to(choice.dtype) * _FORCE
    g = sp.n_group
    group_scores = choice.view(-1, g, sp.n_experts // g).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=sp.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, g, sp.n_experts // g).reshape(-1, sp.n_experts)
    choice = choice.masked_fill(~score_mask.bool(), float("-inf"))  # HF's own group exclusion
    idx = torch.topk(choice, k=sp.top_k, dim=-1, sorted=False)[1]
    w = scores.gather(1, idx)
    if sp.renorm:
        w /= w.sum(dim=-1, keepdim=True) + 1e-20
    return w * sp.scale, idx


def drop(weights: Tensor, indices: Tensor, off: Tensor, n_experts: int) -> tuple[Tensor, Tensor]:
    """Remove the slots of `off` experts (bool `n_experts`): sentinel index, weight 0, and the
    token's remaining weights rescaled to its original total. Tokens without such a slot are
    returned untouched (bit-identical)."""
    w, idx, _ = _drop(weights, indices, _sentinel_lookup(off, indices.device), n_experts)
    return w, idx


def _sentinel_lookup(off: Tensor, device) -> Tensor:
    """`off` extended by the sentinel slot (never "off"), indexable by a routing index."""
    return torch.cat([off, off.new_zeros(1)]).to(device)


def _drop(weights: Tensor, indices: Tensor, lookup: Tensor, n_experts: int) -> tuple[Tensor, Tensor, bool]:
    """`drop` with a prebuilt lookup; also says whether any slot was dropped."""
    hit = lookup[indices]
    if not bool(hit.any()):
        return weights, indices, False
    kept = weights.masked_fill(hit, 0)
    total, ksum = weights.sum(-1, keepdim=True), kept.sum(-1, keepdim=True)
    factor = torch.where(ksum > 0, total / torch.where(ksum > 0, ksum, torch.ones_like(ksum)),
                         torch.zeros_like(ksum))
    touched = hit.any(-1, keepdim=True)
    return torch.where(touched, kept * factor, weights), indices.masked_fill(hit, n_experts), True


# --- hooks on the router modules -------------------------------------------------------------
@contextmanager
def router_hooks(subject, fns: dict[int, Callable]) -> Iterator[None]:
    """`fn(logits, weights, indices) -> None | (weights, indices)` on each layer's router, for the block.

    Registered after any active switch, so a reader sees the routing actually used.
    """
    handles = []
    try:
        for layer, fn in fns.items():
            handles.append(hook_module(subject, layer).register_forward_hook(_wrap(fn)))
        yield
    finally:
        for h in reversed(handles):
            h.remove()


def _wrap(fn: Callable):
    def hook(module, args, out):
        logits, w, idx = out
        new = fn(logits, w, idx)
        return None if new is None else (logits, *new)

    return hook


@dataclass(frozen=True)
class LayerSwitch:
    """What one edit does at one layer: expert ids to drop, mask, force (with a logit bias)."""

    drop: frozenset[int] = frozenset()
    mask: frozenset[int] = frozenset()
    force: frozenset[int] = frozenset()
    force_bias: float = 0.0


def experts_module(subject, layer: int) -> nn.Module | None:
    """The fused experts of an MoE layer (owner of `mlp.experts.gate_up_proj`), if found (cached)."""
    cache = subject.__dict__.setdefault("_wb_experts", {})
    if layer not in cache:
        name = f"model.layers.{layer}.mlp.experts.gate_up_proj"
        cache[layer] = _owner(subject.hf_model, subject.params[name]) if name in subject.params else None
    return cache[layer]


def _grouped_mm_without_sentinels(self: nn.Module, hidden_states: Tensor, top_k_index: Tensor,
                                  top_k_weights: Tensor) -> Tensor:
    """transformers' `grouped_mm_experts_forward`, op for op, for a call with sentinel slots.

    The stock function honours the sentinel (with `_is_expert_parallel` set) by masking the
    full `(slots, 2 d_mlp)` and `(slots, d_model)` outputs of both grouped matmuls, ~2 ms per
    layer on CPU for the tiny organism. Here the sentinel slots (sorted to the tail, outside the
    grouped_mm offsets) are never gathered: the same sort, offsets and per-expert matmuls run on
    the valid rows only, and the sentinel slots contribute exact zeros to the per-token sum (as
    their zero weight does in the stock path). Same numbers (tested bit-exact on CPU).
    """
    from transformers.integrations.moe import _grouped_linear

    k = top_k_index.size(-1)
    n_tok, d = hidden_states.size(0), hidden_states.size(-1)
    sample_weights = top_k_weights.reshape(-1)
    expert_ids_g, perm = torch.sort(top_k_index.reshape(-1))
    n_experts = int(cast(int, self.num_experts))
    hist = expert_ids_g.float() if hidden_states.device.type in ("cpu", "mps") else expert_ids_g.int()
    tokens_per_expert = torch.histc(hist, bins=n_experts, min=0, max=n_experts - 1)
    offsets = torch.cumsum(tokens_per_expert, dim=0, dtype=torch.int32)
    n = int(offsets[-1])  # rows routed to a real expert (CPU only: no device sync)
    perm, ids = perm[:n], expert_ids_g[:n]
    x = hidden_states[perm // k]
    if self.has_gate:
        w_up, b_up = self.gate_up_proj, (self.gate_up_proj_bias[ids] if self.has_bias else None)
    else:
        w_up, b_up = self.up_proj, (self.up_proj_bias[ids] if self.has_bias else None)
    h = _grouped_linear(x, w_up, offsets, bias=b_up, is_transposed=self.is_transposed)
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
    h = _grouped_linear(h, self.down_proj, offsets, bias=self.down_proj_bias[ids] if self.has_bias else None,
                        is_transposed=self.is_transposed)
    if self.has_post_expert_norm:
        h = self.post_expert_norm(h)
    h = h * sample_weights[perm].unsqueeze(-1)
    out = h.new_zeros(perm.numel() + (top_k_index.numel() - n), d)
    out[perm] = h
    return out.view(n_tok, k, d).sum(dim=1).to(hidden_states.dtype)


def _stock_grouped_mm(experts: nn.Module) -> bool:
    """Whether `experts` dispatches to transformers' own grouped_mm forward (the one mirrored above)."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, grouped_mm_experts_forward
    except ImportError:
        return False
    impl = getattr(getattr(experts, "config", None), "_experts_implementation", None)
    return (impl == "grouped_mm" and ALL_EXPERTS_FUNCTIONS.get("grouped_mm") is grouped_mm_experts_forward
            and all(hasattr(experts, a) for a in ("num_experts", "has_gate", "has_bias", "is_transposed",
                                                  "has_post_expert_norm", "down_proj")))


class _Board:
    """The one hook on a router while any switch is active there; switches merge (union).

    A dropped slot carries HF's sentinel index (== n_experts). The eager experts loop skips it
    always; the fused `grouped_mm`/`batched_mm` kernels (the default) honour it only when the
    module's `_is_expert_parallel` flag is set (otherwise grouped_mm leaves that row
    uninitialised, which times a zero weight can still be NaN). So on a call whose routing has
    a sentinel slot the flag is set on that layer's experts (and restored on the next call
    without one, and when the board goes): a call without one runs the stock path untouched.
    On CPU with the stock `grouped_mm`, such a call runs `_grouped_mm_without_sentinels`
    (the same numbers without the stock path's full-size masking).
    """

    def __init__(self, module: nn.Module, outer: nn.Module, sp: RouterSpec, experts: nn.Module | None):
        self.module, self.spec = module, sp  # the HF router: its correction bias is read at call time
        self.entries: list[tuple[object, LayerSwitch]] = []
        self.experts = experts if experts is not None and hasattr(experts, "_is_expert_parallel") else None
        self._ep = self.experts._is_expert_parallel if self.experts is not None else None
        self._sentinel = False  # whether the last routing this board returned had a dropped slot
        self._own_forward = False
        if self.experts is not None and "forward" not in self.experts.__dict__:
            # An instance attribute, so only this layer's experts see it (removed in `close`).
            self.experts.__dict__["forward"] = self._experts_forward
            self._own_forward = True
        self.handle = outer.register_forward_hook(self._hook)
        self._merge()

    def close(self) -> None:
        self.handle.remove()
        if self.experts is not None:
            self.experts._is_expert_parallel = self._ep
            if self._own_forward and self.experts.__dict__.get("forward") == self._experts_forward:
                del self.experts.__dict__["forward"]

    def _experts_forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor, *args, **kw):
        ex = self.experts
        assert ex is not None
        if (self._sentinel and not args and not kw and hidden_states.device.type == "cpu"
                and _stock_grouped_mm(ex)):
            return _grouped_mm_without_sentinels(ex, hidden_states, top_k_index, top_k_weights)
        return type(ex).forward(ex, hidden_states, top_k_index, top_k_weights, *args, **kw)

    def _merge(self) -> None:
        n = self.spec.n_experts

        def vec(ids: Iterable[int]) -> Tensor | None:
            ids = sorted(set(ids))
            if not ids:
                return None
            v = torch.zeros(n, dtype=torch.bool)
            v[ids] = True
            return v

        e = [s for _, s in self.entries]
        self.mask = vec(i for s in e for i in s.mask)
        self.force = vec(i for s in e for i in s.force)
        bias = torch.zeros(n)
        for s in e:  # stacked edits forcing one expert: the largest bias holds
            for i in s.force:
                bias[i] = max(float(bias[i]), s.force_bias)
        self.force_bias = bias if bool(bias.any()) else None
        # Masked experts are also dropped: in a degenerate group-limited case top-k could still
        # reach one, and "switched off" must mean never computed.
        self.drop = vec(i for s in e for i in s.drop | s.mask)
        self._lookups: dict[torch.device, Tensor] = {}  # `drop` + sentinel slot, per device

    def _hook(self, module, args, out):
        logits, w, idx = out
        dev = logits.device
        if self.mask is not None or self.force is not None:
            w, idx = route(self.spec, logits, self.module, mask=None if self.mask is None else self.mask.to(dev),
                           force=None if self.force is None else self.force.to(dev),
                           force_bias=None if self.force_bias is None else self.force_bias.to(dev))
        sentinel = False
        if self.drop is not None:
            lookup = self._lookups.get(idx.device)
            if lookup is None:
                lookup = self._lookups[idx.device] = _sentinel_lookup(self.drop, idx.device)
            w, idx, sentinel = _drop(w, idx, lookup, self.spec.n_experts)
        self._sentinel = sentinel
        if self.experts is not None:
            self.experts._is_expert_parallel = True if sentinel else self._ep
        return logits, w, idx


def add_switch(subject, per_layer: dict[int, LayerSwitch]) -> Callable[[], None]:
    """Activate a switch on each named layer until the returned `remove()` is called."""
    boards = subject.__dict__.setdefault("_wb_boards", {})
    key = object()
    added: list[int] = []
    for layer, sw in per_layer.items():
        inner, outer = _routers(subject, layer)
        if layer not in boards:
            boards[layer] = _Board(inner, outer, spec(subject, layer), experts_module(subject, layer))
        boards[layer].entries.append((key, sw))
        boards[layer]._merge()
        added.append(layer)

    def remove() -> None:
        for layer in added:
            b = boards.get(layer)
            if b is None:
                continue
            b.entries = [(k, s) for k, s in b.entries if k is not key]
            if b.entries:
                b._merge()
            else:
                b.close()
                del boards[layer]

    return remove


def active_switches(subject) -> dict[int, LayerSwitch]:
    """The merged switch per layer currently in force (for reports and tests)."""
    out = {}
    for layer, b in subject.__dict__.get("_wb_boards", {}).items():
        e = [s for _, s in b.entries]
        out[layer] = LayerSwitch(frozenset().union(*(s.drop for s in e)), frozenset().union(*(s.mask for s in e)),
                                 frozenset().union(*(s.force for s in e)))
    return out
