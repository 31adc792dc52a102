"""Direction steering: set the projection of the last token on a unit direction (the knob).

    edit = ProjectionSteer.from_knob(knob, "context")      # or ProjectionSteer(site=..., direction=..., value=...)
    with edit.applied(subject):
        subject.generate(bare_prompts)                     # answers from context, no instruction given

`h <- h - (u.h) u + value u` at `site`, position -1 (every row's last real token under left
padding), on every forward pass *and* every KV-cached decoding step: an intervention at -1 acts on
the one new position of each step (`workbench.interventions`), so steering does not switch off
after the prompt. The edit is an `ActivationEdit`: weights are untouched, revert pops exactly its
intervention, and the same value steers any model of the family whose width matches (clear
`model_id` to apply it to a model other than the one it was made for: the knob paper's transfer
from the fine-tuned model to its non-fine-tuned siblings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from edits.base import ActivationEdit, register
from workbench.interventions import SetProjection
from workbench.sites import Site

_WIDE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@register
@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class ProjectionSteer(ActivationEdit):
    """Set u.h to `value` at `site`, last token, on every pass; `direction` is stored unit-norm."""

    method: ClassVar[str] = "projection_steer"
    site: Site
    direction: Tensor
    value: float
    model_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.site, Site):
            raise ValueError(f"site: expected a workbench.Site, got {type(self.site).__name__}")
        if self.site.component not in _WIDE:
            raise ValueError(f"site: steering needs a d_model-wide stream, one of {list(_WIDE)}; got {self.site}")
        d = torch.as_tensor(self.direction, dtype=torch.float32).detach().flatten().clone()
        if not torch.isfinite(d).all():
            raise ValueError("direction: contains NaN or inf")
        if d.norm() == 0:
            raise ValueError("direction: has zero norm; expected a non-zero vector")
        object.__setattr__(self, "direction", d / d.norm())
        v = float(self.value)
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"value: expected a finite number, got {self.value!r}")
        object.__setattr__(self, "value", v)

    @classmethod
    def from_knob(cls, knob: Any, intent: str, *, model_id: str | None = None) -> ProjectionSteer:
        """The knob set to `intent` ('context' or 'prior'); duck-typed on `probes.knob.Knob`."""
        if intent not in ("context", "prior"):
            raise ValueError(f"intent: expected 'context' or 'prior', got {intent!r}")
        value = knob.c_ctx if intent == "context" else knob.c_prior
        return cls(site=knob.site, direction=knob.direction, value=value, model_id=model_id)

    @classmethod
    def example(cls, subject) -> ProjectionSteer:
        """A random direction at the middle layer's residual stream, set far out (visible effect)."""
        g = torch.Generator().manual_seed(0)
        layer = subject.arch.n_layers // 2
        return cls(site=Site(layer, "resid_post"), direction=torch.randn(subject.arch.d_model, generator=g),
                   value=10.0, model_id=subject.identity())

    def check_compatible(self, subject) -> None:
        super().check_compatible(subject)
        subject.check_site(self.site)
        if self.direction.numel() != subject.arch.d_model:
            raise ValueError(f"{self.method}: direction has size {self.direction.numel()}, but {subject.name!r} has "
                             f"d_model={subject.arch.d_model}; this edit was made for another model")

    def interventions(self, subject) -> list[SetProjection]:
        return [SetProjection(self.site, self.direction, self.value, positions=-1)]
