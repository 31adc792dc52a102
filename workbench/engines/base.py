"""The engine contract: what Subject needs from TransformerLens or nnsight.

A method is written once against `Subject`; engines only translate. Each engine receives
a list of `(Site, fn)` pairs for one call, where `fn` takes the *whole-layer* activation in
its canonical shape (`workbench.sites.AXES`) and returns a replacement or None. Hooks live for
exactly one `run`/`generate` call, so nothing can be left registered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from workbench.arch import Arch
from workbench.sites import Site

# HF MoE blocks route from the router's *other* outputs (top-k weights and indices) and drop
# the logits they return, so writing the logits changes nothing, on either engine.
ROUTER_READ_ONLY = ("{site}: router_logits are read-only; the MoE block routes from its own top-k, "
                    "not from the returned logits, so a write would change nothing. Change routing with an "
                    "expert edit (router weights) instead")

HookFn = Callable[[Tensor], Tensor | None]
Hooks = Sequence[tuple[Site, HookFn]]


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding changes nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Engine(ABC):
    name: str
    hf_model: torch.nn.Module
    arch: Arch

    @abstractmethod
    def supports(self, site: Site) -> bool:
        """Whether this engine can read/write the site on this architecture."""

    @abstractmethod
    def run(self, input_ids: Tensor, attention_mask: Tensor, hooks: Hooks = ()) -> Tensor:
        """One forward pass with `hooks` active; returns logits `batch pos vocab`."""

    @abstractmethod
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, hooks: Hooks, *, max_new_tokens: int,
        do_sample: bool, temperature: float, pad_token_id: int, eos_token_id: int | None,
    ) -> Tensor:
        """KV-cached generation with `hooks` active at the prompt pass and at every decoding step.
        Returns the full sequences (prompt + new tokens)."""
