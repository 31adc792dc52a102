"""Subject: one loaded causal LM + tokenizer behind one engine.

Everything a method needs goes through here, so a method written once runs on either
engine. Interventions are pushed onto a stack by `intervene(...)` (and by activation-level
edits) and handed to the engine for each call; no hook outlives the call that needs it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from workbench.arch import Arch
from workbench.engines.base import Engine, HookFn
from workbench.interventions import Intervention
from workbench.params import Params
from workbench.sites import COMPONENTS, Site


@dataclass(frozen=True)
class Tokens:
    """A padded batch: `input_ids` and `attention_mask`, both `batch pos` (left padded)."""

    input_ids: Tensor
    attention_mask: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, idx) -> Tokens:
        ids, mask = self.input_ids[idx], self.attention_mask[idx]
        if ids.ndim == 1:
            ids, mask = ids[None], mask[None]
        # Drop columns that are padding in every row, so a sub-batch is as short as it can be.
        keep = mask.bool().any(0)
        first = int(keep.float().argmax()) if keep.any() else 0
        return Tokens(ids[:, first:], mask[:, first:])

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(-1)


class Subject:
    def __init__(self, hf_model, tokenizer, engine: Engine, arch: Arch, params: Params, *, name: str,
                 source: str, device: str = "cpu"):
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.engine = engine
        self.arch = arch
        self.params = params
        self.name = name
        self.source = source
        self.device = device
        self._stack: list[Intervention] = []
        self._identity = params.identity()  # of the weights as loaded: edits check against it

    def __repr__(self) -> str:
        a = self.arch
        moe = f", experts={a.n_experts} top{a.top_k}" if a.is_moe else ""
        return (f"Subject({self.name!r}, engine={self.engine_name!r}, {a.family}, layers={a.n_layers}, "
                f"heads={a.n_heads}, d_model={a.d_model}{moe})")

    def __deepcopy__(self, memo):
        """A safe copy: reload the checkpoint and copy the current weights in.

        A plain deep copy of a bridged model is wrong (the bridge's wrappers close over the
        original modules, so the copy would keep running the original's weights).
        """
        from workbench.diff import copy_subject

        return copy_subject(self)

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def identity(self) -> str:
        return self._identity

    # --- sites -------------------------------------------------------------------------
    def check_site(self, site: Site) -> Site:
        if not isinstance(site, Site):
            raise ValueError(f"site: expected a workbench.Site, got {type(site).__name__}")
        if site.layer >= self.arch.n_layers:
            raise ValueError(f"site {site}: layer {site.layer} out of range; valid 0..{self.arch.n_layers - 1}")
        if site.head is not None and site.head >= self.arch.n_heads:
            raise ValueError(f"site {site}: head {site.head} out of range; valid 0..{self.arch.n_heads - 1}")
        if not self.engine.supports(site.whole):
            valid = [c for c in COMPONENTS if self.engine.supports(Site(site.layer, c))]
            raise ValueError(f"site {site}: {self.arch.family} on the {self.engine_name!r} engine has no "
                             f"{site.component!r} at layer {site.layer}; valid components there: {valid}")
        return site

    def sites(self, component: str) -> list[Site]:
        return [Site(i, component) for i in range(self.arch.n_layers) if self.engine.supports(Site(i, component))]

    # --- tokens ------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str] | str, *, padding_side: str = "left") -> Tokens:
        """Tokenize with the tokenizer's own BOS policy (the same on both engines), padded.

        Left padding is the default so that position -1 is every row's last real token;
        position ids are computed from the mask, so padding never changes a result.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts: expected at least one string, got an empty list")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts: expected a list of strings")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        tok = self.tokenizer
        old = tok.padding_side
        tok.padding_side = padding_side
        try:
            enc = tok(texts, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old
        return Tokens(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def as_tokens(self, inputs: Any, attention_mask: Tensor | None = None) -> Tokens:
        """Accept Tokens, a list of strings, a `batch pos` id tensor, or a list of equal-length id lists."""
        if isinstance(inputs, Tokens):
            return inputs
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
            return self.tokenize(inputs)
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise ValueError("inputs: expected at least one sequence, got an empty list")
            lens = {len(x) for x in inputs}
            if len(lens) > 1:
                raise ValueError(f"inputs: sequences of different lengths {sorted(lens)} without padding; "
                                 "pass texts, or use subject.tokenize(...) to pad them")
            inputs = torch.tensor([list(x) for x in inputs], dtype=torch.long)
        if isinstance(inputs, Tensor):
            ids = inputs if inputs.ndim == 2 else inputs[None]
            if ids.numel() == 0:
                raise ValueError("inputs: expected a non-empty `batch pos` tensor")
            mask = torch.ones_like(ids) if attention_mask is None else attention_mask
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask: shape {tuple(mask.shape)} differs from input_ids {tuple(ids.shape)}")
            return Tokens(ids.to(self.device), mask.to(self.device))
        raise ValueError(f"inputs: expected Tokens, strings or a tensor of ids, got {type(inputs).__name__}")

    # --- running -----------------------------------------------------------------------
    @contextmanager
    def intervene(self, *interventions: Intervention) -> Iterator[Subject]:
        """`with subject.intervene(Add(site, v)): ...` — active for every call inside the block."""
        for iv in interventions:
            if not isinstance(iv, Intervention):
                raise ValueError(f"intervene: expected Intervention values, got {type(iv).__name__}")
            self.check_site(iv.site)
        n = len(self._stack)
        self._stack.extend(interventions)
        try:
            yield self
        finally:
            del self._stack[n:]

    @property
    def active(self) -> tuple[Intervention, ...]:
        return tuple(self._stack)

    def _hooks(self, extra: Sequence[tuple[Site, HookFn]] = (), *, generating: bool = False):
        hooks: list[tuple[Site, HookFn]] = []
        for iv in self._stack:
            if generating:
                # First call at a site is the prompt pass; later calls are single-token decode steps.
                state = {"calls": 0}

                def fn(x, iv=iv, state=state):
                    state["calls"] += 1
                    if state["calls"] > 1 and not iv.acts_while_decoding:
                        return None
                    return iv(x)

                hooks.append((iv.site.whole, fn))
            else:
                hooks.append((iv.site.whole, iv))
        hooks.extend((s.whole, f) for s, f in extra)
        return hooks

    def forward(self, inputs: Any, attention_mask: Tensor | None = None) -> Tensor:
        """Logits `batch pos vocab` with all active interventions and edits applied."""
        t = self.as_tokens(inputs, attention_mask)
        return self.engine.run(t.input_ids, t.attention_mask, self._hooks())

    def run(self, inputs: Any, *, hooks: Sequence[tuple[Site, HookFn]] = (),
            cache: Sequence[Site] = ()) -> tuple[Tensor, dict[Site, Tensor]]:
        """Forward with extra raw hooks and a per-site cache of whole activations (this batch).

        For methods that need gradients or custom hooks; `capture` is the dataset-scale path.
        """
        t = self.as_tokens(inputs)
        for s in list(cache) + [s for s, _ in hooks]:
            self.check_site(s)
        store: dict[Site, Tensor] = {}
        extra = list(hooks)
        for s in cache:
            def keep(x, s=s):
                store[s] = x if s.head is None else (x[:, :, s.head] if s.component == "z" else x[:, s.head])
                return None

            extra.append((s, keep))
        logits = self.engine.run(t.input_ids, t.attention_mask, self._hooks(extra))
        return logits, store

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | str, *, max_new_tokens: int = 20, do_sample: bool = False,
                 temperature: float = 1.0, seed: int | None = None, stop_at_eos: bool = True) -> list[str]:
        """Continue each prompt; interventions stay active at every KV-cached decoding step.

        Returns only the new text of each prompt.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
        t = self.tokenize(prompts)
        if seed is not None:
            torch.manual_seed(seed)
        tok = self.tokenizer
        out = self.engine.generate(
            t.input_ids, t.attention_mask, self._hooks(generating=True), max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id if stop_at_eos else None,
        )
        new = out[:, t.input_ids.shape[1]:]
        return [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]

    def capture(self, inputs: Any, sites: Sequence[Site] | Site, *, positions=None, batch_size: int = 64,
                store: str | None = None, progress: bool | None = None):
        """Activations at `sites` over a whole dataset; see `workbench.capture.capture`."""
        from workbench.capture import capture

        return capture(self, inputs, sites, positions=positions, batch_size=batch_size, store=store,
                       progress=progress)
