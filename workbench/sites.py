"""Site: a typed address of one activation inside a model.

This is the only module that spells hook names. A Site says *what* (layer, component,
head); engines decide *where* that lives in their module tree (`tl_name` for
TransformerLens, `engines.nnsight` maps the same Site onto HF module paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Component = Literal[
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "z",
    "pattern",
    "mlp_post",
    "router_logits",
]
COMPONENTS: tuple[str, ...] = get_args(Component)

# Execution order inside one block: engines that must visit modules in order (nnsight) sort by it.
ORDER = {c: i for i, c in enumerate(
    ["resid_pre", "pattern", "z", "attn_out", "resid_mid", "router_logits", "mlp_post", "mlp_out", "resid_post"]
)}

# The axis layout of each component's canonical tensor (TransformerLens's vocabulary).
AXES: dict[str, tuple[str, ...]] = {
    "resid_pre": ("batch", "pos", "d_model"),
    "resid_mid": ("batch", "pos", "d_model"),
    "resid_post": ("batch", "pos", "d_model"),
    "attn_out": ("batch", "pos", "d_model"),
    "mlp_out": ("batch", "pos", "d_model"),
    "z": ("batch", "pos", "head", "d_head"),
    "pattern": ("batch", "head", "query_pos", "key_pos"),
    "mlp_post": ("batch", "pos", "d_mlp"),
    "router_logits": ("batch", "pos", "n_experts"),
}

_TL = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "z": "blocks.{l}.attn.hook_z",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "mlp_post": "blocks.{l}.mlp.hook_post",
    "router_logits": "blocks.{l}.mlp.gate.hook_out",
}


@dataclass(frozen=True, order=True)
class Site:
    """One activation: `Site(3, "resid_post")`, `Site(1, "z", head=2)`.

    `head` selects one head of a per-head component (`z`, `pattern`); positions are not part
    of a Site, they are a separate argument wherever a site is read or written.
    """

    layer: int
    component: str
    head: int | None = None

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ValueError(f"Site.component: unknown {self.component!r}; expected one of {list(COMPONENTS)}")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ValueError(f"Site.layer: expected a non-negative int, got {self.layer!r}")
        if self.head is not None:
            if self.component not in ("z", "pattern"):
                raise ValueError(f"Site.head: only 'z' and 'pattern' have heads, not {self.component!r}")
            if not isinstance(self.head, int) or self.head < 0:
                raise ValueError(f"Site.head: expected a non-negative int or None, got {self.head!r}")

    @property
    def axes(self) -> tuple[str, ...]:
        axes = AXES[self.component]
        return tuple(a for a in axes if a != "head") if self.head is not None else axes

    @property
    def tl_name(self) -> str:
        """The TransformerLens hook name of the (whole-layer) activation."""
        return _TL[self.component].format(l=self.layer)

    @property
    def whole(self) -> Site:
        """The same site without a head selection (what an engine actually hooks)."""
        return Site(self.layer, self.component) if self.head is not None else self

    def key(self) -> tuple[int, int, int]:
        """Execution order key: layer, component order, head."""
        return (self.layer, ORDER[self.component], -1 if self.head is None else self.head)

    def __str__(self) -> str:
        h = "" if self.head is None else f".h{self.head}"
        return f"L{self.layer}.{self.component}{h}"

    def to_json(self) -> dict:
        return {"layer": self.layer, "component": self.component, "head": self.head}

    @classmethod
    def from_json(cls, d: dict) -> Site:
        return cls(int(d["layer"]), str(d["component"]), None if d.get("head") is None else int(d["head"]))

    @classmethod
    def parse(cls, s: str) -> Site:
        """Inverse of `str(site)`: 'L3.resid_post', 'L1.z.h2'."""
        parts = s.split(".")
        try:
            layer = int(parts[0].lstrip("L"))
            head = int(parts[2].lstrip("h")) if len(parts) > 2 else None
            return cls(layer, parts[1], head)
        except (IndexError, ValueError) as e:
            raise ValueError(f"Site.parse: expected 'L<layer>.<component>[.h<head>]', got {s!r}") from e
