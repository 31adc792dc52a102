"""Context-sensitivity knob (Minder, Du et al. 2025): layer search, a 1-D subspace, steering.

    from probes.knob import intent_pairs, pair_metrics, search_layers, fit_knob, separation
    train, held = intent_pairs(400, split="train"), intent_pairs(120, split="eval")
    val, test = held.split((0.5, 0.5))
    s = search_layers(tuned, val)                                   # where the intent moves
    knob = fit_knob(tuned, train, s.site, val=val, test=test)       # DAS direction + constants
    pair_metrics(tuned, test, steer=knob.steer())                   # intent removed, knob set
    separation(knob, base, test)                                    # same direction, another model

The pieces live in one file each: `knob_data` (pairs and PairAcc), `knob_search` (the O(log L)
layer search), `knob_fit` (DAS, difference of means, the `Knob`), `knob_eval` (separation and
the steering table with random-direction controls). Steering as an Edit: `edits.steer`.
"""

from probes.knob_data import IntentPairs, PairMetrics, bare_metrics, confident, intent_pairs, pair_metrics
from probes.knob_eval import Separation, SteeringTable, auroc, cohens_d, separation, steering_table
from probes.knob_fit import (
    Knob,
    choose_constants,
    diff_means_direction,
    fit_das_direction,
    fit_knob,
    interchange_accuracy,
    projections,
    random_direction,
)
from probes.knob_search import LayerSearch, search_layers

__all__ = [
    "IntentPairs", "Knob", "LayerSearch", "PairMetrics", "Separation", "SteeringTable", "auroc", "bare_metrics",
    "choose_constants", "cohens_d", "confident", "diff_means_direction", "fit_das_direction", "fit_knob",
    "intent_pairs", "interchange_accuracy", "pair_metrics", "projections", "random_direction", "search_layers",
    "separation", "steering_table",
]
