"""Section 3 of METHODS.md on the shipped base / entity-tuned organisms (the issue's targets).

A circuit found in `base` by path patching is faithful there (>= 0.8) while random circuits of
the same size are near chance; the same circuit is read in `entity-tuned`; patching the tuned
model's value-fetcher group (A) into base recovers >= 70 % of the accuracy gap; attribution
patching ranks heads like exact patching (Spearman >= 0.8).
"""

from __future__ import annotations

import pytest

from workbench import zoo
from workbench.circuits import entity_batch, faithfulness
from workbench.cmap import cmap
from workbench.patching import LogitDiff, activation_patching, attribution_patching, rank_agreement
from workbench.path_patching import ADJACENT_GROUPS, search_groups
from workbench.tasks import entity_tracking

pytestmark = pytest.mark.slow
N_OBJECTS, N = 4, 64
# The organisms read "box L O , ... . box L": groups B-D feed A's query (last token) and its key/value at
# the answer object's position, E feeds C's values at the label's earlier mention (see
# notebooks/cmap_entity_tracking.ipynb). Each group keeps <= 4 heads.
SPEC = ADJACENT_GROUPS


@pytest.fixture(scope="module")
def study():
    pair = zoo.pair("entity-tuned")
    ex = entity_tracking(N, seed=0, split="eval", n_objects=N_OBJECTS)
    co = entity_tracking(N, seed=1, split="eval", n_objects=N_OBJECTS)
    eb, ek = entity_batch(pair.base, ex), entity_batch(pair.base, co)
    search = search_groups(pair.base, list(eb.prompts), list(ek.prompts), eb.answers, eb.positions, spec=SPEC,
                           max_heads=4)
    return pair, eb, ek, search


def _faith(study):
    pair, eb, _, search = study
    circuit = search.circuit()
    kw = dict(seeds=range(10), chance=1 / N_OBJECTS)
    return (faithfulness(pair.base, list(eb.prompts), eb.answers, circuit, eb.positions, **kw),
            faithfulness(pair.tuned, list(eb.prompts), eb.answers, circuit, eb.positions, **kw))


def test_base_circuit_beats_random_circuits_in_both_models(study):
    base, tuned = _faith(study)
    assert base.model_accuracy > 1.5 / N_OBJECTS, base
    for f in (base, tuned):
        mean_random = sum(f.random_accuracy) / len(f.random_accuracy)
        assert mean_random <= 1.5 / N_OBJECTS, f  # random circuits: at or below chance
        assert f.circuit_accuracy > 1.5 * mean_random, f


def test_base_circuit_faithfulness_reaches_the_issue_target(study):
    base, tuned = _faith(study)
    assert base.faithfulness >= 0.8, base
    assert max(base.random_accuracy) < base.circuit_accuracy - 0.2, base  # random same-size circuits: far below
    assert tuned.faithfulness >= 0.8, tuned  # the same circuit carries the task in entity-tuned too


def test_cmap_value_fetchers_recover_the_gap(study):
    pair, eb, _, search = study
    circuit = search.circuit()
    r = cmap(pair, list(eb.prompts), eb.answers, circuit, eb.positions)
    assert r.tuned_accuracy - r.base_accuracy >= 0.1, r  # the pair really differs on this task
    df = r.to_frame().set_index("patched")
    assert df.loc["group A", "recovery"] >= 0.7, df


def test_attribution_ranks_heads_like_exact(study):
    pair, eb, ek, _ = study
    metric = LogitDiff(eb.answers, ek.answers)
    kw = dict(component="z", per_position=False)
    exact = activation_patching(pair.base, list(eb.prompts), list(ek.prompts), metric, **kw)
    approx = attribution_patching(pair.base, list(eb.prompts), list(ek.prompts), metric, **kw)
    assert rank_agreement(exact, approx) >= 0.8
