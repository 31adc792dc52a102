"""TransformerLens 4 engine: a `TransformerBridge` around the unprocessed HF model.

`boot_transformers(hf_model=...)` swaps bridge components into the HF module tree *in place*
and keeps the very same Parameter objects, so weights stay HF's (no LayerNorm folding, no
centring) and a direct HF call fires the bridge's canonical hook points. We call the HF
model ourselves (logits identical to HF by construction) and let `bridge.hooks(...)` own
registration and clean-up.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from workbench.arch import Arch
from workbench.engines.base import ROUTER_READ_ONLY, Engine, Hooks, position_ids
from workbench.sites import Site


def _boot(path: str, hf_model, tokenizer, device: str):
    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(path, hf_model=hf_model, tokenizer=tokenizer, device=device)


def _alias_cache_kwarg(model) -> None:
    """Let the bridge's attention find the KV cache under transformers 5.2x's name.

    transformers 5.24 decoder layers pass the cache as `cache=`; TransformerLens 4.3's
    reimplemented attention looks for `past_key_values`/`layer_past`, finds nothing and
    skips the cache update, so every cached decode step attended to itself alone and
    `generate` diverged from HF (Llama-family). We alias the kwarg on those modules only.
    """
    for m in model.modules():
        if not hasattr(type(m), "_update_kv_cache") or getattr(m, "_wb_cache_alias", False):
            continue
        orig = m.forward

        def forward(*args, _orig=orig, **kw):
            if kw.get("cache") is not None and kw.get("past_key_values") is None and "layer_past" not in kw:
                kw["past_key_values"] = kw["cache"]
            return _orig(*args, **kw)

        # The bridge's __setattr__ forwards unknown names to the wrapped HF module; bypass it.
        object.__setattr__(m, "forward", forward)
        object.__setattr__(m, "_wb_cache_alias", True)


def _hooked_point(m: torch.nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or getattr(m, "fwd_hooks", None) or getattr(m, "bwd_hooks", None))


def _skip_unobserved_norm_stats(model) -> None:
    """Let the bridge's normalisation skip statistics that no hook observes.

    `NormalizationBridge._hf_autograd_forward_with_hooks` computes the variance, `rsqrt`,
    `sqrt` and normalised input only to fire `hook_scale` / `hook_normalized`, then returns
    the HF module's own output unless a hook edited one of them. With no hook of any kind on
    those two points (nor a global module hook) nothing can observe or edit them, so we return
    that same `original_component(x)` directly: the same tensor, bit for bit, without the
    extra passes over the residual (~10 % of a tiny model's forward). Otherwise the bridge's
    method runs as before.
    """
    from torch.nn.modules import module as nn_module
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    stock = NormalizationBridge._hf_autograd_forward_with_hooks
    for m in model.modules():
        if (not isinstance(m, NormalizationBridge) or type(m)._hf_autograd_forward_with_hooks is not stock
                or "_hf_autograd_forward_with_hooks" in m.__dict__):
            continue

        def fast(x, _m=m):
            comp = _m.original_component
            if (comp is None or isinstance(comp, torch.nn.Identity) or _hooked_point(_m.hook_scale)
                    or _hooked_point(_m.hook_normalized) or nn_module._global_forward_hooks
                    or nn_module._global_forward_pre_hooks or nn_module._global_backward_hooks
                    or nn_module._global_backward_pre_hooks):
                return stock(_m, x)
            result = comp(x)
            return result.to(x.dtype) if result.dtype != x.dtype else result

        object.__setattr__(m, "_hf_autograd_forward_with_hooks", fast)


def _cache_block_kwarg_filter(model) -> None:
    """`BlockBridge._filter_kwargs_for_forward` with the wrapped forward's signature cached.

    The bridge calls `inspect.signature` on every block call to drop the keyword arguments the
    HF block does not take (~0.1 ms a call, a few per cent of a tiny model's forward). The
    signature is read once per forward function (re-read if the block's forward is replaced);
    the filtering is the bridge's, unchanged.
    """
    import inspect

    from transformer_lens.model_bridge.generalized_components.block import BlockBridge

    stock = BlockBridge._filter_kwargs_for_forward
    for m in model.modules():
        if (not isinstance(m, BlockBridge) or type(m)._filter_kwargs_for_forward is not stock
                or "_filter_kwargs_for_forward" in m.__dict__):
            continue
        memo: list = [None, None]  # [forward function, (param names, accepts **kwargs) or None]

        def filtered(kwargs, num_positional_args: int = 0, _m=m, _memo=memo):
            comp = _m.original_component
            if comp is None:
                return kwargs
            fwd = comp.forward
            key = getattr(fwd, "__func__", fwd)
            if _memo[0] is not key:
                try:
                    sig = inspect.signature(fwd)
                    params = sig.parameters
                    _memo[1] = (list(params), any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()))
                except (ValueError, TypeError):
                    _memo[1] = None
                _memo[0] = key
            if _memo[1] is None:
                return kwargs
            names, var_kw = _memo[1]
            if var_kw:
                return kwargs
            valid, positional = set(names), set(names[:num_positional_args])
            return {k: v for k, v in kwargs.items() if k in valid and k not in positional}

        object.__setattr__(m, "_filter_kwargs_for_forward", filtered)


class TLEngine(Engine):
    name = "tl"

    def __init__(self, path: str, hf_model, tokenizer, arch: Arch, device: str = "cpu"):
        self.hf_model = hf_model
        self.arch = arch
        try:
            self.bridge = _boot(path, hf_model, tokenizer, device)
        except Exception as e:  # the bridge's own errors name internals, not what to do
            raise ValueError(f"engine='tl': TransformerLens could not boot model family {arch.family!r} "
                             f"({type(e).__name__}: {e}); try engine='nnsight'") from e
        _alias_cache_kwarg(hf_model)
        _skip_unobserved_norm_stats(hf_model)
        _cache_block_kwarg_filter(hf_model)
        # The bridge wires permanent capture pre-hooks on its first forward; run that forward
        # now, so the model's hook set is fixed at load time (the test guard counts hooks).
        with torch.no_grad():
            hf_model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
        self._names = set(self.bridge.hook_dict.keys()) | set(getattr(self.bridge, "hook_aliases", {}) or {})
        self._points: dict[str, tuple] = {}  # hook name -> (canonical name, HookPoint), resolved once

    def supports(self, site: Site) -> bool:
        if site.layer >= self.arch.n_layers:
            return False
        if site.component == "router_logits":
            return site.layer in self.arch.moe_layers and site.tl_name in self._names
        if site.component == "mlp_post" and self.arch.is_moe and site.layer in self.arch.moe_layers:
            return False  # no single d_mlp hidden state in a mixture of experts
        return site.tl_name in self._names

    def _canonical(self, component: str, x: Tensor, batch: int) -> Tensor:
        if component == "router_logits":
            # HF routers see flattened tokens (`batch*pos n_experts`); hooks get `batch pos n_experts`.
            return x.reshape(batch, -1, x.shape[-1])
        if component == "z":
            # The bridge splits MLA's (DeepSeek) o_proj input by the q/k head_dim, not v_head_dim
            # (4 heads x 12 came out as 6 x 8); regroup by the real head count. A no-op elsewhere.
            return x.reshape(*x.shape[:2], self.arch.n_heads, -1)
        return x

    def _fwd_hooks(self, hooks: Hooks, batch: int):
        out = []
        for site, fn in hooks:
            def tl_fn(x, hook, fn=fn, comp=site.component):
                y = fn(self._canonical(comp, x, batch))
                if y is None:
                    return x
                if comp == "router_logits":  # a write would be silently dropped: refuse it
                    raise ValueError(ROUTER_READ_ONLY.format(site=hook.name))
                if comp == "resid_mid":
                    # The bridge's hook_resid_mid is ln2's input, the same tensor the block later adds
                    # the MLP output to; returning a copy would change only the MLP's input.
                    x.copy_(y.reshape(x.shape))
                    return x
                return y.reshape(x.shape)

            out.append((site.tl_name, tl_fn))
        return out

    def _point(self, name: str) -> tuple:
        """(canonical name, HookPoint) of a hook name, as `bridge.hooks` resolves it.

        `bridge.hooks` rebuilds the whole hook dict and alias map on every call (~0.7 ms per
        forward, a tenth of a tiny model's batch); the hook points are fixed at load time (the
        same assumption as `_names`), so each name is resolved once.
        """
        got = self._points.get(name)
        if got is None:
            from transformer_lens.model_bridge.bridge_core import build_alias_to_canonical_map

            hook_dict = self.bridge.hook_dict
            got = self._points[name] = self.bridge._resolve_hook_point(
                name, build_alias_to_canonical_map(hook_dict), hook_dict)
        return got

    @contextmanager
    def _hooked(self, fwd_hooks: list) -> Iterator[None]:
        """`bridge.hooks(fwd_hooks=...)` with cached name resolution: the same checks, context
        level and alias names per hook, the same removal of only the handles added here."""
        if not fwd_hooks:
            yield
            return
        b = self.bridge
        level = getattr(b, "context_level", 0) + 1
        b.context_level = level
        added = []
        try:
            for name, fn in fwd_hooks:
                canonical, point = self._point(name)
                b._check_hook_fireable(name, canonical)
                b.check_hooks_to_add(point, canonical, fn, dir="fwd")
                if b.compatibility_mode and canonical != point.name:
                    alias_names = ([point.name] if point.name is not None else []) + [canonical]
                    handle = point.add_hook(fn, dir="fwd", level=level, alias_names=alias_names)
                else:
                    handle = point.add_hook(fn, dir="fwd", level=level)
                added.append((point, handle))
            yield
        finally:
            try:
                for point, handle in added:
                    b._remove_temporary_hook(point, "fwd", handle)
            finally:
                b.context_level -= 1

    def run(self, input_ids: Tensor, attention_mask: Tensor, hooks: Hooks = ()) -> Tensor:
        with self._hooked(self._fwd_hooks(hooks, input_ids.shape[0])):
            out = self.hf_model(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), use_cache=False,
            )
        return out.logits

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, hooks, *, max_new_tokens, do_sample, temperature,
                 pad_token_id, eos_token_id):
        with self._hooked(self._fwd_hooks(hooks, input_ids.shape[0])):
            return self.hf_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                do_sample=do_sample, temperature=temperature if do_sample else None, top_k=None, top_p=None,
                pad_token_id=pad_token_id, eos_token_id=eos_token_id, use_cache=True,
            )
