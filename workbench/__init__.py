"""The workbench core: models, sites, capture, interventions, analyses.

    import workbench as wb
    s = wb.load("path/to/hf_checkpoint")            # TransformerLens 4 engine by default
    acts = s.capture(["the apple is in box f"], [wb.Site(1, "resid_post")])
    with s.intervene(wb.Add(wb.Site(1, "resid_post"), v)): s.forward(...)
"""

from workbench.capture import Activations
from workbench.interventions import Ablate, Add, Intervention, Patch, SetProjection
from workbench.models import ModelPair, load
from workbench.sites import COMPONENTS, Site
from workbench.subject import Subject, Tokens

__all__ = [
    "COMPONENTS", "Ablate", "Activations", "Add", "Intervention", "ModelPair", "Patch", "SetProjection",
    "Site", "Subject", "Tokens", "load",
]
