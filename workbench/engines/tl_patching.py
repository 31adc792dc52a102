"""TransformerLens's own patching utilities and raw TL hook points, behind one small door.

Two jobs, both engine-level because they spell TransformerLens names:

- `tl_act_patch`: run `transformer_lens.patching.get_act_patch_*` on a Subject's
  TransformerBridge, the peer our batched sweeps are checked (and benchmarked) against.
- `run_raw`: a forward with hooks on TL hook points the `Site` vocabulary lacks
  (`attn.hook_q`, `attn.hook_k`, `attn.hook_v`), for path patching into a receiver head's
  query/key/value. Active interventions of the Subject stay applied.
- `run_entering`: a forward whose rows enter the block stack at different layers with given
  residuals (`resid_pre`), so the blocks below each row's entry layer are not computed for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from workbench.sites import Site

RawHook = tuple[str, Callable[[Tensor], Tensor | None]]

# TransformerLens sweep function per (component, per-position).
_TL_SWEEPS = {
    ("resid_pre", True): "get_act_patch_resid_pre",
    ("resid_mid", True): "get_act_patch_resid_mid",
    ("attn_out", True): "get_act_patch_attn_out",
    ("mlp_out", True): "get_act_patch_mlp_out",
    ("z", True): "get_act_patch_attn_head_out_by_pos",
    ("z", False): "get_act_patch_attn_head_out_all_pos",
}
QKV = ("q", "k", "v")


def _bridge(subject):
    b = getattr(subject.engine, "bridge", None)
    if b is None:
        raise ValueError(f"subject: TransformerLens utilities need the 'tl' engine, got {subject.engine_name!r}")
    return b


def tl_act_patch(subject, component: str, clean_ids: Tensor, corrupt_ids: Tensor,
                 metric: Callable[[Tensor], Tensor], *, by_pos: bool = True) -> Tensor:
    """TransformerLens's own sweep on the same model: `[layer pos]`, `[layer pos head]` or `[layer head]`.

    Same semantics as `workbench.patching.activation_patching`: run `corrupt_ids`, patch in the
    clean activation one cell at a time, record `metric(logits)`. Unpadded `batch pos` ids only
    (TL runs them without an attention mask).
    """
    from transformer_lens import patching

    key = (component, by_pos)
    if key not in _TL_SWEEPS:
        raise ValueError(f"component: TransformerLens has no sweep for {component!r} (by_pos={by_pos}); "
                         f"expected one of {sorted({c for c, _ in _TL_SWEEPS})}")
    bridge = _bridge(subject)
    sites = [Site(layer, component) for layer in range(subject.arch.n_layers)]
    with torch.no_grad(), _no_leaked_hooks(subject.hf_model):
        # The clean cache through the Subject (the bridge's run_with_cache leaves hooks behind);
        # TL's sweep only indexes it by hook name.
        _, cache = subject.run(clean_ids, cache=sites)
        clean_cache = {s.tl_name: v for s, v in cache.items()}
        fn = getattr(patching, _TL_SWEEPS[key])
        return fn(bridge, corrupt_ids, clean_cache, metric)


@contextmanager
def _no_leaked_hooks(model: torch.nn.Module):
    """Remove any torch hook that TransformerLens registers and does not take down again."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
    before = {(id(m), k): set(getattr(m, k)) for m in model.modules() for k in kinds}
    try:
        yield
    finally:
        for m in model.modules():
            for k in kinds:
                d = getattr(m, k)
                for h in [h for h in d if h not in before.get((id(m), k), set())]:
                    del d[h]


def raw_name(layer: int, kind: str) -> str:
    """TL hook name of a head's query/key/value vectors (`batch pos head d_head`; k, v per kv head)."""
    if kind not in QKV:
        raise ValueError(f"kind: expected one of {QKV}, got {kind!r}")
    return f"blocks.{layer}.attn.hook_{kind}"


def run_raw(subject, input_ids: Tensor, attention_mask: Tensor, *, hooks: Sequence[tuple[Site, Callable]] = (),
            raw: Sequence[RawHook] = ()) -> Tensor:
    """Logits with Site hooks and raw TL-name hooks (fn(x) -> replacement or None) active together."""
    from workbench.engines.base import position_ids

    eng = subject.engine
    bridge = _bridge(subject)
    for name, _ in raw:
        if name not in bridge.hook_dict:
            raise ValueError(f"raw hook {name!r}: no such TransformerLens hook point on {subject.name}")
    # Site hooks (and the Subject's active interventions) by their TL names, then the raw ones.
    named = [(site.tl_name, fn) for site, fn in subject._hooks(hooks)] + list(raw)
    if any(site.component == "router_logits" for site, _ in subject._hooks(hooks)):
        raise ValueError("run_raw: router_logits hooks need the engine's own reshaping; use subject.run")
    fwd = []
    for name, fn in named:
        def tl_fn(x, hook, fn=fn):
            y = fn(x)
            return x if y is None else y

        fwd.append((name, tl_fn))
    with bridge.hooks(fwd_hooks=fwd):
        out = eng.hf_model(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids(attention_mask), use_cache=False)
    return out.logits


# --- forwards that start mid-stack ------------------------------------------------------------
def can_enter_mid_stack(subject) -> bool:
    """Whether `run_entering` applies: the TL engine, a single `blocks` stack, no active interventions.

    Active interventions are excluded because a cached residual already carries the effect of
    every intervention up to its layer; re-entering it would apply those at that layer twice.
    """
    bridge = getattr(subject.engine, "bridge", None)
    blocks = getattr(bridge, "blocks", None)
    return blocks is not None and len(blocks) == subject.arch.n_layers and not subject.active


def _rows(v: Any, full: int, n: int) -> Any:
    """The first `n` rows of every per-row tensor in a block's arguments (`full` rows in all)."""
    if isinstance(v, Tensor):
        return v[:n] if v.ndim > 0 and v.shape[0] == full and n != full else v
    if isinstance(v, (tuple, list)):
        return type(v)(_rows(x, full, n) for x in v)
    return v


@contextmanager
def _entering(blocks: Sequence[torch.nn.Module], entries: Sequence[tuple[int, Tensor]], full: int) -> Iterator[None]:
    """Make block `layer` take its input rows from `entries` and grow the batch as it goes up.

    Rows are ordered by entry layer, so the rows alive at block `i` are the first `n` rows of
    the batch the model was called with: per-row block arguments (attention mask, rotary
    position embeddings, position ids, all computed by the model for the whole batch) are cut
    to those rows. Blocks below the lowest entry layer are skipped (the embedding they would
    have transformed is discarded at the entry layer).
    """
    new = dict(entries)
    first = min(new)
    saved = []
    for i, block in enumerate(blocks):
        own = block.__dict__.get("forward")
        orig = own if own is not None else type(block).forward.__get__(block)

        def forward(*args, i=i, orig=orig, **kw):
            h = args[0] if args else kw["hidden_states"]
            if i < first:
                return h  # never read: block `first` replaces its input
            rows = new.get(i)
            if i == first:
                h = rows
            elif rows is not None:
                h = torch.cat([h, rows])
            n = h.shape[0]
            kw = {k: _rows(v, full, n) for k, v in kw.items()}
            if args:
                return orig(h, *(_rows(a, full, n) for a in args[1:]), **kw)
            return orig(**{**kw, "hidden_states": h})

        saved.append((block, own))
        # The bridge's __setattr__ forwards unknown names to the wrapped HF module; bypass it.
        object.__setattr__(block, "forward", forward)
    try:
        yield
    finally:
        for block, own in saved:
            if own is None:
                del block.__dict__["forward"]
            else:
                object.__setattr__(block, "forward", own)


def run_entering(subject, input_ids: Tensor, attention_mask: Tensor, entries: Sequence[tuple[int, Tensor]],
                 hooks: Sequence[tuple[Site, Callable]] = ()) -> Tensor:
    """Logits of `input_ids` where rows enter block `layer` with the given `resid_pre` values.

    `entries` is `[(layer, rows pos d_model), ...]` in increasing layer order; their rows,
    concatenated, are the rows of `input_ids`/`attention_mask` (the tokens still set padding,
    position ids and the attention mask). Exact for residual-stream patching: a row patched at
    layer L is the corrupted run below L, so it can start at L from the cached residual.
    """
    if not can_enter_mid_stack(subject):
        raise ValueError("run_entering: needs the 'tl' engine with a blocks stack and no active interventions")
    layers = [layer for layer, _ in entries]
    if layers != sorted(set(layers)):
        raise ValueError(f"entries: expected strictly increasing layers, got {layers}")
    full = input_ids.shape[0]
    if sum(r.shape[0] for _, r in entries) != full:
        raise ValueError(f"entries: {sum(r.shape[0] for _, r in entries)} rows for a batch of {full}")
    with _entering(list(_bridge(subject).blocks), entries, full):
        return subject.engine.run(input_ids, attention_mask, subject._hooks(hooks))
