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
        # The bridge wires permanent capture pre-hooks on its first forward; run that forward
        # now, so the model's hook set is fixed at load time (the test guard counts hooks).
        with torch.no_grad():
            hf_model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
        self._names = set(self.bridge.hook_dict.keys()) | set(getattr(self.bridge, "hook_aliases", {}) or {})

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

    def run(self, input_ids: Tensor, attention_mask: Tensor, hooks: Hooks = ()) -> Tensor:
        with self.bridge.hooks(fwd_hooks=self._fwd_hooks(hooks, input_ids.shape[0])):
            out = self.hf_model(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), use_cache=False,
            )
        return out.logits

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, hooks, *, max_new_tokens, do_sample, temperature,
                 pad_token_id, eos_token_id):
        with self.bridge.hooks(fwd_hooks=self._fwd_hooks(hooks, input_ids.shape[0])):
            return self.hf_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                do_sample=do_sample, temperature=temperature if do_sample else None, top_k=None, top_p=None,
                pad_token_id=pad_token_id, eos_token_id=eos_token_id, use_cache=True,
            )
