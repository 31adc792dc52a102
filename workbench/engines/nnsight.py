"""nnsight 0.8 engine: the plain HF model wrapped in `nnsight.TransformersModel`.

`LanguageModel` is deprecated in nnsight 0.8; `TransformersModel(model, task=...)` wraps a
pre-loaded module without copying it, so weights stay HF's and `Params` views stay valid.
A Site maps to a *point*: one HF module's input or output (plus a tuple index). Inside a
trace nnsight serves module values in execution order, so hooks are grouped by point and
visited in the order the family's forward reaches them; each point is read once and written
back once. `remote=True` sends the same trace to NDIF.

What HF cannot give us: attention weights are returned *after* they were used, so a
`pattern` is readable but not writable here; likewise the router's logits are returned
but the MoE block routes from its own copy, so `router_logits` is read-only on this engine.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.arch import Arch
from workbench.engines.base import ROUTER_READ_ONLY, Engine, Hooks, position_ids
from workbench.sites import COMPONENTS, Site


@dataclass(frozen=True)
class Point:
    """Where a component lives inside one decoder layer: `module` ("" = the layer itself)."""

    module: str
    io: str  # "input" or "output"
    index: int | None = None  # element of a tuple output


_LLAMA = {  # Llama, Qwen2, Mistral and the MoE families share this layout
    "resid_pre": Point("", "input"),
    "z": Point("self_attn.o_proj", "input"),
    "pattern": Point("self_attn", "output", 1),
    "attn_out": Point("self_attn", "output", 0),
    "resid_mid": Point("post_attention_layernorm", "input"),
    "router_logits": Point("mlp.gate", "output", 0),
    "mlp_post": Point("mlp.down_proj", "input"),
    "mlp_out": Point("mlp", "output"),
    "resid_post": Point("", "output"),
}
# Gemma-2 norms the attention and MLP outputs before adding them to the residual; the
# added (post-norm) tensors are what TransformerLens's bridge calls hook_attn_out/hook_mlp_out.
_GEMMA2 = _LLAMA | {
    "attn_out": Point("post_attention_layernorm", "output"),
    "resid_mid": Point("pre_feedforward_layernorm", "input"),
    "mlp_out": Point("post_feedforward_layernorm", "output"),
}
_GPT2 = {
    "resid_pre": Point("", "input"),
    "z": Point("attn.c_proj", "input"),
    "pattern": Point("attn", "output", 1),
    "attn_out": Point("attn", "output", 0),
    "resid_mid": Point("ln_2", "input"),
    "mlp_post": Point("mlp.c_proj", "input"),
    "mlp_out": Point("mlp", "output"),
    "resid_post": Point("", "output"),
}
_NEOX = {
    "resid_pre": Point("", "input"),
    "z": Point("attention.dense", "input"),
    "pattern": Point("attention", "output", 1),
    "attn_out": Point("attention", "output", 0),
    "resid_mid": Point("post_attention_layernorm", "input"),  # sequential residual only
    "mlp_post": Point("mlp.dense_4h_to_h", "input"),
    "mlp_out": Point("mlp", "output"),
    "resid_post": Point("", "output"),
}
_LAYERS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}
_MAPS = {"gpt2": _GPT2, "gpt_neox": _NEOX, "gemma2": _GEMMA2}
SUPPORTED_FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2", "gemma2", "mistral", "mixtral", "qwen2_moe",
                      "olmoe", "deepseek_v3")


def nnsight_path(site: Site, arch: Arch) -> Point:
    """The HF module path (relative to the model root) and io of a Site: the one place it is spelled."""
    layer = _LAYERS.get(arch.family, "model.layers") + f".{site.layer}"
    p = _MAPS.get(arch.family, _LLAMA)[site.component]
    return Point(f"{layer}.{p.module}" if p.module else layer, p.io, p.index)


def _wrap(hf_model, tokenizer):
    from nnsight import TransformersModel

    logging.getLogger("nnsight").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")


def _envoy(root, path: str):
    e = root
    for part in path.split("."):
        e = e[int(part)] if part.isdigit() else getattr(e, part)
    return e


class NNsightEngine(Engine):
    name = "nnsight"

    def __init__(self, path: str, hf_model, tokenizer, arch: Arch, device: str = "cpu", remote: bool = False):
        if arch.family not in SUPPORTED_FAMILIES:
            raise ValueError(f"engine='nnsight': no site map for model family {arch.family!r}; "
                             f"supported: {list(SUPPORTED_FAMILIES)}")
        self.hf_model = hf_model
        self.arch = arch
        self.remote = bool(remote)
        self.parallel_residual = bool(getattr(hf_model.config, "use_parallel_residual", False))
        self.model = _wrap(hf_model, tokenizer)
        self._modules = dict(hf_model.named_modules())

    # --- sites ---------------------------------------------------------------------------
    def supports(self, site: Site) -> bool:
        a = self.arch
        if site.layer >= a.n_layers or site.component not in COMPONENTS:
            return False
        moe_layer = a.is_moe and site.layer in a.moe_layers
        if site.component == "router_logits" and not moe_layer:
            return False
        if site.component == "mlp_post" and moe_layer:
            return False  # no single d_mlp hidden state in a mixture of experts
        if site.component == "resid_mid" and self.parallel_residual:
            return False  # attention and MLP both read resid_pre; there is no mid point
        return nnsight_path(site, a).module in self._modules

    # --- canonical shapes ----------------------------------------------------------------
    def _to_canonical(self, comp: str, x: Tensor, batch: int) -> Tensor:
        if comp == "z":
            return x.reshape(*x.shape[:-1], self.arch.n_heads, -1)
        if comp == "router_logits":
            return x.reshape(batch, -1, x.shape[-1])
        return x

    # --- hooks inside a trace ------------------------------------------------------------
    def _plan(self, hooks: Hooks):
        """Group hooks by point, ordered as the forward reaches them."""
        groups: dict[tuple, list[tuple[Site, object]]] = defaultdict(list)
        order = {}
        for site, fn in hooks:
            p = nnsight_path(site.whole, self.arch)
            groups[(p.module, p.io)].append((site.whole, fn))
            rank = _EXEC.index(site.component)
            order[(p.module, p.io)] = min(order.get((p.module, p.io), (1 << 30,)), (site.layer, rank))
        return [(key, groups[key]) for key in sorted(groups, key=lambda k: order[k])]

    def _apply(self, plan, batch: int) -> None:
        for (module, io), items in plan:
            env = _envoy(self.model, module)
            value = env.input if io == "input" else env.output
            changed = False
            for site, fn in items:
                idx = nnsight_path(site, self.arch).index
                raw = value[idx] if idx is not None else value
                y = fn(self._to_canonical(site.component, raw, batch))
                if y is None:
                    continue
                if site.component == "router_logits":
                    raise ValueError(ROUTER_READ_ONLY.format(site=site))
                if site.component == "pattern":
                    raise ValueError(f"{site}: the nnsight engine can read 'pattern' but not write it (HF "
                                     "returns attention weights after using them); use engine='tl' to patch it")
                new = y.reshape(raw.shape).to(raw.dtype)  # back to HF's layout
                if site.component == "resid_mid":
                    # The norm's input *is* the residual tensor the block adds the MLP output to:
                    # write it in place, or only the MLP would see the change.
                    raw.copy_(new)
                    continue
                value = (*value[:idx], new, *value[idx + 1:]) if idx is not None else new
                changed = True
            if changed:
                if io == "input":
                    env.input = value
                else:
                    env.output = value

    def run(self, input_ids: Tensor, attention_mask: Tensor, hooks: Hooks = ()) -> Tensor:
        plan = self._plan(hooks)
        batch = input_ids.shape[0]
        with self.model.trace(dict(input_ids=input_ids, attention_mask=attention_mask),
                              position_ids=position_ids(attention_mask), use_cache=False,
                              remote=self.remote):
            self._apply(plan, batch)
            logits = self.model.output.logits.save()
        return logits

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, hooks, *, max_new_tokens, do_sample, temperature,
                 pad_token_id, eos_token_id):
        plan = self._plan(hooks)
        batch = input_ids.shape[0]
        out: list[Tensor] = []
        # Exactly max_new_tokens forwards (eos off), so a bounded `tracer.iter` sees every step
        # (an unbounded one never hands control back). Rows finished early are padded below, as
        # HF does; earlier tokens do not depend on later steps, so the result is the same.
        with self.model.generate(
            dict(input_ids=input_ids, attention_mask=attention_mask), max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature if do_sample else None, top_k=None, top_p=None,
            pad_token_id=pad_token_id, eos_token_id=None, use_cache=True, remote=self.remote,
        ) as tracer:
            for _ in tracer.iter[:max_new_tokens]:
                self._apply(plan, batch)
            out.append(tracer.result)
        seq = out[0]
        if eos_token_id is not None:
            new = seq[:, input_ids.shape[1]:]
            done = (new == eos_token_id).long().cumsum(-1)
            after = (done - (new == eos_token_id).long()) > 0  # strictly after the first eos
            seq = torch.cat([seq[:, :input_ids.shape[1]], new.masked_fill(after, pad_token_id)], 1)
        return seq


# Execution order of the points within a layer, the same for every family here: z (the o_proj
# input) is served before the attention module returns its output and pattern.
_EXEC = ("resid_pre", "z", "pattern", "attn_out", "resid_mid", "router_logits", "mlp_post", "mlp_out", "resid_post")
