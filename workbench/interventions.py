"""Interventions as values: printable, comparable, saveable (the penzai way).

An intervention never hides in a closure. It is a frozen dataclass naming a Site, the
positions it touches and its tensors; `Subject.intervene(*ivs)` turns the values into hooks
for exactly the duration of a `with` block. `iv(act)` is the pure function a hook applies.

Positions: `None` = every position; an int or a list of ints index the (left-padded) pos
axis, so `-1` is every row's last real token. During KV-cached decoding each step sees one
new position: interventions at `None` or `-1` act on it (steering stays on at every step),
ones pinned to absolute prompt positions act only on the prompt pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.sites import Site

Positions = int | tuple[int, ...] | None


def fields_equal(a: object, b: object) -> bool:
    """Dataclass equality where tensor fields compare by shape and value (`==` on tensors is
    elementwise). Shared by interventions and edits: both are values."""
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.shape == y.shape and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def _norm_positions(positions: Any, name: str) -> Positions:
    if positions is None:
        return None
    if isinstance(positions, bool):
        raise ValueError(f"{name}.positions: expected None, an int or a list of ints, got {positions!r}")
    if isinstance(positions, int):
        return positions
    try:
        out = tuple(int(p) for p in positions)
    except TypeError as e:
        raise ValueError(f"{name}.positions: expected None, an int or a list of ints, got {positions!r}") from e
    if not out:
        raise ValueError(f"{name}.positions: an empty list touches nothing; pass None for all positions")
    return out


def _check_tensor(t: Any, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=torch.float32)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    return t.detach()


def _pos_dim(site: Site) -> int:
    return 2 if site.component == "pattern" else 1


def _index(positions: Positions):
    if positions is None:
        return slice(None)
    if isinstance(positions, int):
        return [positions]
    return list(positions)


class Intervention:
    """Common behaviour: the hook-side call, decode rule, equality, repr and JSON."""

    site: Site
    positions: Positions

    def edit(self, x: Tensor) -> Tensor:  # x: the selected positions of the site
        raise NotImplementedError

    @property
    def acts_while_decoding(self) -> bool:
        return self.positions is None or self.positions == -1 or self.positions == (-1,)

    def __call__(self, act: Tensor) -> Tensor:
        """Apply to a whole-layer activation in its canonical shape; returns a new tensor."""
        dim = _pos_dim(self.site)
        idx: list[Any] = [slice(None)] * act.ndim
        idx[dim] = _index(self.positions)
        if self.site.head is not None:
            idx[2 if self.site.component == "z" else 1] = self.site.head
        out = act.clone()
        out[tuple(idx)] = self.edit(act[tuple(idx)]).to(act.dtype)
        return out

    # --- value semantics -------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return fields_equal(self, other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.site, self.positions))

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = f"tensor{tuple(v.shape)}"
            elif isinstance(v, Site):
                v = str(v)
            parts.append(f"{f.name}={v}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def to_json(self) -> dict:
        d: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = {"tensor": v.tolist(), "dtype": str(v.dtype).removeprefix("torch.")}
            elif isinstance(v, Site):
                v = v.to_json()
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def from_json(d: dict) -> Intervention:
    """Rebuild any intervention from `iv.to_json()`."""
    cls = {c.__name__: c for c in (Patch, Add, SetProjection, Ablate)}.get(d.get("type", ""))
    if cls is None:
        raise ValueError(f"from_json: unknown intervention type {d.get('type')!r}")
    kw: dict[str, Any] = {}
    for f in fields(cls):
        v = d.get(f.name)
        if isinstance(v, dict) and "tensor" in v:
            v = torch.tensor(v["tensor"], dtype=getattr(torch, v["dtype"]))
        elif isinstance(v, dict) and "component" in v:
            v = Site.from_json(v)
        kw[f.name] = v
    return cls(**kw)


@dataclass(frozen=True, eq=False, repr=False)
class Patch(Intervention):
    """Replace the activation at `positions` with `values` (batch may be 1 to broadcast)."""

    site: Site
    values: Tensor
    positions: Positions = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _check_tensor(self.values, "Patch.values"))
        object.__setattr__(self, "positions", _norm_positions(self.positions, "Patch"))

    @property
    def acts_while_decoding(self) -> bool:
        return self.positions == -1 or self.positions == (-1,)

    def edit(self, x: Tensor) -> Tensor:
        v = self.values.to(x.device)
        if v.shape[1:] != x.shape[1:] or v.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"Patch at {self.site}: values have shape {tuple(v.shape)} but the patched activation "
                f"has shape {tuple(x.shape)} (batch may be 1 to broadcast)"
            )
        return v.expand_as(x)


@dataclass(frozen=True, eq=False, repr=False)
class Add(Intervention):
    """Add `vector` (last-axis sized, or the full selected shape) at `positions`."""

    site: Site
    vector: Tensor
    positions: Positions = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", _check_tensor(self.vector, "Add.vector"))
        object.__setattr__(self, "positions", _norm_positions(self.positions, "Add"))

    def edit(self, x: Tensor) -> Tensor:
        v = self.vector.to(x.device, x.dtype)
        try:
            torch.broadcast_shapes(v.shape, x.shape)
        except RuntimeError as e:
            raise ValueError(
                f"Add at {self.site}: vector has shape {tuple(v.shape)}, which does not broadcast to the "
                f"activation shape {tuple(x.shape)}"
            ) from e
        return x + v


@dataclass(frozen=True, eq=False, repr=False)
class SetProjection(Intervention):
    """Set the component along unit `direction` to `value`: h <- h - (u.h) u + value u."""

    site: Site
    direction: Tensor
    value: float
    positions: Positions = -1

    def __post_init__(self) -> None:
        d = _check_tensor(self.direction, "SetProjection.direction")
        if d.ndim != 1:
            raise ValueError(f"SetProjection.direction: expected a 1-D vector, got shape {tuple(d.shape)}")
        n = d.norm()
        if n == 0:
            raise ValueError("SetProjection.direction: has zero norm; expected a non-zero vector")
        object.__setattr__(self, "direction", d / n)
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "positions", _norm_positions(self.positions, "SetProjection"))

    def edit(self, x: Tensor) -> Tensor:
        u = self.direction.to(x.device, x.dtype)
        if u.shape[0] != x.shape[-1]:
            raise ValueError(
                f"SetProjection at {self.site}: direction has size {u.shape[0]} but the activation's last "
                f"axis has size {x.shape[-1]} (activation shape {tuple(x.shape)})"
            )
        proj = x @ u
        return x + (self.value - proj).unsqueeze(-1) * u


@dataclass(frozen=True, eq=False, repr=False)
class Ablate(Intervention):
    """Zero-ablate, or mean-ablate with a given `mean` (shape of the selected activation sans batch)."""

    site: Site
    mode: Literal["zero", "mean"] = "zero"
    mean: Tensor | None = None
    positions: Positions = None

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean"):
            raise ValueError(f"Ablate.mode: expected 'zero' or 'mean', got {self.mode!r}")
        if self.mode == "mean" and self.mean is None:
            raise ValueError("Ablate.mean: mode='mean' needs the mean activation (e.g. from subject.capture)")
        if self.mean is not None:
            object.__setattr__(self, "mean", _check_tensor(self.mean, "Ablate.mean"))
        object.__setattr__(self, "positions", _norm_positions(self.positions, "Ablate"))

    def edit(self, x: Tensor) -> Tensor:
        if self.mode == "zero":
            return torch.zeros_like(x)
        m = self.mean.to(x.device, x.dtype)  # type: ignore[union-attr]
        try:
            return m.expand_as(x).clone()
        except RuntimeError as e:
            raise ValueError(
                f"Ablate at {self.site}: mean has shape {tuple(m.shape)}, which does not broadcast to the "
                f"activation shape {tuple(x.shape)}"
            ) from e
