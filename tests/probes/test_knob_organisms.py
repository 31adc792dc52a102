"""The knob on the model organisms (base / intent-tuned / entity-tuned), held-out items only.

What METHODS.md section 2 says must show: a narrow layer range on intent-tuned; with the intent
instruction removed, DAS steering gives PairAcc >= 0.8 on intent-tuned; the same direction
steers base (never tuned on intents) clearly above base's own PairAcc; random unit directions
at the same site (several seeds) give no gain. Difference of means and TransformerLens's own
fit_das are measured beside our DAS. Everything is fit once per module (slow).
"""

from __future__ import annotations

import numpy as np
import pytest

from probes.knob import (
    confident,
    fit_knob,
    intent_pairs,
    interchange_accuracy,
    search_layers,
    separation,
    steering_table,
)
from probes.knob_fit import interchange_rows
from tests.tiny import guard_track
from workbench import zoo

pytestmark = pytest.mark.slow

TRAIN, HELD, EPOCHS = 300, 160, 2


@pytest.fixture(scope="module")
def subjects():
    return {n: guard_track(zoo.load(n)) for n in ("intent-tuned", "base", "entity-tuned")}


@pytest.fixture(scope="module")
def data():
    train = intent_pairs(TRAIN, seed=0, split="train")
    val, test = intent_pairs(HELD, seed=1, split="eval").split((0.4, 0.6), seed=0)
    return train, val, test


@pytest.fixture(scope="module")
def search(subjects, data):
    return search_layers(subjects["intent-tuned"], data[1])


@pytest.fixture(scope="module")
def knobs(subjects, data, search):
    train, val, test = data
    t = subjects["intent-tuned"]
    return {m: fit_knob(t, train, search.site, method=m, val=val, test=test, epochs=EPOCHS) for m in ("das", "diff_means")}


@pytest.fixture(scope="module")
def table(subjects, data, knobs):
    _, val, test = data
    return steering_table(list(subjects.values()), knobs, val, test, random_seeds=(0, 1, 2)).to_frame()


def _acc(f, subject, condition):
    return f[(f.subject == subject) & (f.condition == condition)]["pair_acc"]


def test_search_finds_a_narrow_range(search):
    assert search.reached, f"patching every layer never exceeds tau: {search.p_source}"
    assert len(search.layers) < search.n_layers
    assert search.n_patched_passes <= 2 * int(np.ceil(np.log2(search.n_layers))) + 2


def test_das_steers_intent_tuned_without_the_instruction(table, knobs):
    assert knobs["das"].interchange_acc > knobs["das"].interchange_acc_random + 0.3
    assert float(_acc(table, "intent-tuned", "steered: das").iloc[0]) >= 0.8


def test_the_direction_transfers_to_base_clearly(table):
    own = float(_acc(table, "base", "with intent").iloc[0])
    steered = float(_acc(table, "base", "steered: das").iloc[0])
    rand = _acc(table, "base", "steered: random")
    assert steered >= own + 0.2, f"base: steered {steered} vs own {own}"
    assert steered >= rand.max() + 0.2


def test_random_directions_give_no_gain(table):
    for name in ("intent-tuned", "base"):
        rand = _acc(table, name, "steered: random")
        assert len(rand) == 3 and rand.max() <= float(_acc(table, name, "no intent").iloc[0]) + 0.1


def test_tl_fit_das_agrees(subjects, data, search, knobs):
    from workbench.engines.tl_das import tl_fit_das

    t = subjects["intent-tuned"]
    train, _, test = data
    tr = confident(t, train)
    tg, src, ans = interchange_rows(tr, t.tokenizer)
    basis, _ = tl_fit_das(t, search.site, tg, src, ans, epochs=EPOCHS, batch_size=8, lr=1e-3, seed=0)
    ok = confident(t, test)
    theirs = interchange_accuracy(t, ok, search.site, basis[:, 0])
    ours = knobs["das"].interchange_acc
    assert abs(theirs - ours) <= 0.1, f"TL fit_das {theirs:.2f} vs ours {ours:.2f}"


def test_separation_is_reported_for_every_subject(subjects, data, knobs):
    test = data[2]
    seps = {n: separation(knobs["das"], s, test) for n, s in subjects.items()}
    assert all(np.isfinite(s.cohens_d) for s in seps.values())
    assert seps["intent-tuned"].cohens_d > 0  # oriented on intent-tuned: prior projects higher
