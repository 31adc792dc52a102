"""The Edit protocol: every change to a model is a value with apply/revert (the PEFT way).

An `Edit` is a frozen dataclass: print it, compare it, save it. `edit.apply(subject)`
returns a `Handle`; `handle.revert()` restores the exact original tensors (we keep copies of
the slices we overwrite, because `w + d - d` is not bit-identical in floating point).
Edits stack on a subject and revert in reverse order. Two kinds share the protocol:

- `WeightEdit`: writes parameter slices (`changes(subject)` says which, and their new values);
- `ActivationEdit`: pushes interventions onto the subject (`interventions(subject)`), active on
  every forward pass and decoding step until reverted — the path for engines whose weights
  cannot be written (remote execution).

`edit.save(dir)` stores only what defines the edit (JSON config + safetensors tensors) and the
identity of the model it was made for; `Edit.load(dir)` rebuilds it. Nothing here ever writes a
checkpoint on disk: edits live in memory until the user saves a model themselves.

Contract for every registered edit (checked by tests/edits/test_conformance.py, which imports
every `edits.*` module and parametrizes over `REGISTRY`):

- a frozen dataclass with `method` set and a `model_id` field, decorated with `@register`;
- `classmethod example(subject) -> Edit`: a small valid instance made *for* `subject` (model_id
  = `subject.identity()`), whose effect on the logits of a tiny random model is visible (> 1e-4);
  the table builds each edit this way, so a new edit joins the table by defining it (optional
  `example_family: ClassVar[str]` names the tiny random family to use, e.g. "mixtral"; default:
  llama if `example` works there, else mixtral);
- applying it to a model of another identity, or (model_id cleared) of other shapes, raises
  ValueError from `apply` (override `check_compatible` for shape checks beyond what `changes`
  and intervention sites catch);
- `edit.save(dir)` then `Edit.load(dir)` gives an equal edit with identical outputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from workbench.interventions import Intervention, fields_equal
from workbench.sites import Site

REGISTRY: dict[str, type[Edit]] = {}


def register(cls: type[Edit]) -> type[Edit]:
    """Class decorator: make an Edit loadable by name and part of the conformance table."""
    REGISTRY[cls.method] = cls
    return cls


class Handle:
    """What `apply` returns: `revert()` undoes exactly this edit (most recent first)."""

    def __init__(self, subject, edit: Edit, undo):
        self.subject, self.edit, self._undo, self.active = subject, edit, undo, True

    def revert(self) -> None:
        if not self.active:
            return
        stack = _stack(self.subject)
        if stack and stack[-1] is not self:
            raise RuntimeError(f"revert {self.edit.method}: edits revert in reverse order; revert "
                               f"{stack[-1].edit.method} (applied later) first")
        self._undo()
        stack.pop()
        self.active = False

    def __repr__(self) -> str:
        return f"Handle({self.edit!r}, active={self.active})"


def _stack(subject) -> list[Handle]:
    if not hasattr(subject, "_edits"):
        subject._edits = []
    return subject._edits


def applied_edits(subject) -> list[Edit]:
    return [h.edit for h in _stack(subject)]


class Edit:
    """Base of every edit. Subclasses are `@register`ed frozen dataclasses with `method` set.

    `model_id` (a field of every subclass) is the identity of the model the edit was made
    for; `None` means "any model with matching shapes".
    """

    method: ClassVar[str] = "edit"
    model_id: str | None

    # --- protocol ------------------------------------------------------------------------
    def apply(self, subject) -> Handle:
        self.check_compatible(subject)
        undo = self._apply(subject)
        h = Handle(subject, self, undo)
        _stack(subject).append(h)
        return h

    @contextmanager
    def applied(self, subject) -> Iterator[Handle]:
        h = self.apply(subject)
        try:
            yield h
        finally:
            h.revert()

    def _apply(self, subject):  # returns an undo callable
        raise NotImplementedError

    @classmethod
    def example(cls, subject) -> Edit:
        """A small valid instance for `subject` (the conformance table builds every edit this way)."""
        raise NotImplementedError(f"{cls.__name__}.example(subject) is missing: every registered edit provides "
                                  "one (see the contract at the top of edits/base.py)")

    def check_compatible(self, subject) -> None:
        mid = getattr(self, "model_id", None)
        if mid is not None and mid != subject.identity():
            raise ValueError(f"{self.method}: this edit was made for model {mid}, but {subject.name!r} is "
                             f"{subject.identity()}; refit it on this model (or clear model_id to force)")

    # --- value semantics -------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return fields_equal(self, other)

    def __hash__(self) -> int:
        return hash((self.method, getattr(self, "model_id", None)))

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = f"tensor{tuple(v.shape)}"
            elif isinstance(v, (list, tuple)) and len(v) > 6:
                v = f"[{len(v)} items]"
            parts.append(f"{f.name}={v}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # --- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {}
        tensors: dict[str, Tensor] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                tensors[f.name] = v.detach().contiguous().cpu()
            else:
                config[f.name] = _to_json(v)
        (p / "edit.json").write_text(json.dumps({"method": self.method, "config": config}, indent=1))
        save_file(tensors, str(p / "delta.safetensors"))
        return p

    @staticmethod
    def load(path: str | Path) -> Edit:
        from safetensors.torch import load_file

        p = Path(path)
        if not (p / "edit.json").exists():
            raise FileNotFoundError(f"Edit.load: no edit.json in {str(p)!r}")
        meta = json.loads((p / "edit.json").read_text())
        if meta.get("method", "") not in REGISTRY:
            _import_builtin_edits()  # a fresh process may not have imported the module that registers it
        cls = REGISTRY.get(meta.get("method", ""))
        if cls is None:
            raise ValueError(f"Edit.load: unknown method {meta.get('method')!r}; known: {sorted(REGISTRY)}")
        tensors = load_file(str(p / "delta.safetensors")) if (p / "delta.safetensors").exists() else {}
        kw = {k: _from_json(v) for k, v in meta["config"].items()} | tensors
        return cls(**kw)  # type: ignore[call-arg]


def _to_json(v: Any) -> Any:
    if isinstance(v, Site):
        return {"__site__": v.to_json()}
    if isinstance(v, Intervention):
        return {"__iv__": v.to_json()}
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _to_json(x) for k, x in v.items()}
    return v


def _from_json(v: Any) -> Any:
    if isinstance(v, dict) and "__site__" in v:
        return Site.from_json(v["__site__"])
    if isinstance(v, dict) and "__iv__" in v:
        from workbench.interventions import from_json

        return from_json(v["__iv__"])
    if isinstance(v, list):
        return tuple(_from_json(x) for x in v)
    if isinstance(v, dict):
        return {k: _from_json(x) for k, x in v.items()}
    return v


class WeightEdit(Edit):
    """An edit that overwrites parameter slices. Subclasses implement `changes(subject)`:
    a list of `(param_name, index, new_values)` where `param[index] = new_values`."""

    def changes(self, subject) -> list[tuple[str, Any, Tensor]]:
        raise NotImplementedError

    def _apply(self, subject):
        saved: list[tuple[Tensor, Any, Tensor]] = []
        try:
            with torch.no_grad():
                for name, index, new in self.changes(subject):
                    if name not in subject.params:
                        raise ValueError(f"{self.method}: {subject.name!r} has no parameter {name!r}; this edit "
                                         "was made for another model")
                    p = subject.params[name].data
                    try:
                        old = p[index].clone()
                    except IndexError as e:
                        raise ValueError(f"{self.method}: index out of range for {name} of shape "
                                         f"{tuple(p.shape)}; this edit was made for another model") from e
                    if old.shape != new.shape:
                        raise ValueError(f"{self.method}: new values for {name}[{index}] have shape "
                                         f"{tuple(new.shape)}, the parameter slice has {tuple(old.shape)}")
                    saved.append((p, index, old))
                    p[index] = new.to(p.dtype)
        except Exception:
            _restore(saved)
            raise

        return lambda: _restore(saved)

    def touched(self, subject) -> list[str]:
        """Names of the parameters this edit writes (for diff views and tests)."""
        return sorted({name for name, _, _ in self.changes(subject)})


def _restore(saved) -> None:
    with torch.no_grad():
        for p, index, old in reversed(saved):
            p[index] = old


class ActivationEdit(Edit):
    """An edit made of interventions that stay active until reverted."""

    def interventions(self, subject) -> list[Intervention]:
        raise NotImplementedError

    def _apply(self, subject):
        ivs = self.interventions(subject)
        for iv in ivs:
            subject.check_site(iv.site)
            _check_width(self.method, subject, iv)
        n = len(subject._stack)
        subject._stack.extend(ivs)

        def undo():
            # Remove exactly our interventions, wherever later `intervene` blocks left the stack.
            del subject._stack[n:n + len(ivs)]

        return undo


def _check_width(method: str, subject, iv: Intervention) -> None:
    """Refuse (at apply time) a vector whose last axis does not match the site's width."""
    a = subject.arch
    width = {"resid_pre": a.d_model, "resid_mid": a.d_model, "resid_post": a.d_model, "attn_out": a.d_model,
             "mlp_out": a.d_model, "z": a.d_head, "mlp_post": a.d_mlp, "router_logits": a.n_experts}.get(iv.site.component)
    for f in ("vector", "direction", "values", "mean"):
        t = getattr(iv, f, None)
        if width is not None and isinstance(t, Tensor) and t.ndim >= 1 and t.shape[-1] not in (1, width):
            raise ValueError(f"{method}: {type(iv).__name__}.{f} at {iv.site} has last axis {t.shape[-1]}, but "
                             f"{subject.name!r} has width {width} there; this edit was made for another model")


def _import_builtin_edits() -> None:
    """Import the workbench's own edit modules, so their methods are in REGISTRY."""
    import importlib

    for name in ("edits.surgery", "edits.steer", "edits.experts", "edits.graft"):
        importlib.import_module(name)
