"""Things that *change* a model, all behind one Edit protocol (see `edits.base`)."""

from edits.base import REGISTRY, ActivationEdit, Edit, Handle, WeightEdit, applied_edits, register

__all__ = ["REGISTRY", "ActivationEdit", "Edit", "Handle", "WeightEdit", "applied_edits", "register"]
