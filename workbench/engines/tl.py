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
from workbench.engines.base import Engine, Hooks, position_ids
from workbench.sites import Site


def _boot(path: str, hf_model, tokenizer, device: str):
    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(path, hf_model=hf_model, tokenizer=tokenizer, device=device)


class TLEngine(Engine):
    name = "tl"

    def __init__(self, path: str, hf_model, tokenizer, arch: Arch, device: str = "cpu"):
        self.hf_model = hf_model
        self.arch = arch
        self.bridge = _boot(path, hf_model, tokenizer, device)
        self._names = set(self.bridge.hook_dict.keys()) | set(getattr(self.bridge, "hook_aliases", {}) or {})

    def supports(self, site: Site) -> bool:
        if site.layer >= self.arch.n_layers:
            return False
        if site.component == "router_logits":
            return site.layer in self.arch.moe_layers and site.tl_name in self._names
        if site.component == "mlp_post" and self.arch.is_moe and site.layer in self.arch.moe_layers:
            return False  # no single d_mlp hidden state in a mixture of experts
        return site.tl_name in self._names

    def _fwd_hooks(self, hooks: Hooks):
        out = []
        for site, fn in hooks:
            def tl_fn(x, hook, fn=fn):
                y = fn(x)
                return x if y is None else y

            out.append((site.tl_name, tl_fn))
        return out

    def run(self, input_ids: Tensor, attention_mask: Tensor, hooks: Hooks = ()) -> Tensor:
        with self.bridge.hooks(fwd_hooks=self._fwd_hooks(hooks)):
            out = self.hf_model(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), use_cache=False,
            )
        return out.logits

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, hooks, *, max_new_tokens, do_sample, temperature,
                 pad_token_id, eos_token_id):
        with self.bridge.hooks(fwd_hooks=self._fwd_hooks(hooks)):
            return self.hf_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                do_sample=do_sample, temperature=temperature if do_sample else None, top_k=None, top_p=None,
                pad_token_id=pad_token_id, eos_token_id=eos_token_id, use_cache=True,
            )
