"""The world's builders: deterministic for a seed, eval prompts never in training, no unknown words."""

from __future__ import annotations

import pytest

import workbench.tasks as T
from workbench.tasks.example import in_split
from workbench.tasks.vocab import BOX_LABELS, CITY_COUNTRY, OBJECTS, all_words

BUILDERS = [T.entity_tracking, T.context_vs_prior, T.behaviour, T.refusal, T.novel]


@pytest.fixture(scope="module")
def tok():
    return T.build_tokenizer()


def test_tokenizer_contract(tok):
    assert tok.padding_side == "left"
    for attr in ("pad_token", "bos_token", "eos_token", "unk_token"):
        assert getattr(tok, attr) == f"<{attr.split('_')[0]}>"
    enc = tok(["paris is in france .", "box f"], padding=True)
    assert enc["input_ids"][0][0] == tok.bos_token_id
    assert enc["input_ids"][1][:3] == [tok.pad_token_id] * 3 and enc["input_ids"][1][3] == tok.bos_token_id
    assert len(set(all_words())) == len(all_words())
    assert len(tok) == len(all_words()) + 4


@pytest.mark.parametrize("fn", BUILDERS + [T.facts], ids=lambda f: f.__name__)
def test_deterministic_and_known_words(fn, tok):
    a, b = fn(40, seed=7), fn(40, seed=7)
    assert [(e.prompt, e.target, e.label) for e in a] == [(e.prompt, e.target, e.label) for e in b]
    assert a != fn(40, seed=8) or fn is T.facts
    assert len(a) == 40
    for e in a:
        assert tok.unk_token_id not in tok(e.text)["input_ids"], e.text


@pytest.mark.parametrize("fn", BUILDERS, ids=lambda f: f.__name__)
def test_eval_split_is_held_out(fn):
    train = {e.prompt for e in fn(300, seed=0, split="train")}
    held = fn(100, seed=0, split="eval")
    gated = [e for e in held if not (fn is T.refusal and e.meta["kind"] in ("city", "person"))]
    assert all(in_split(e.prompt, "eval") for e in gated if fn is not T.context_vs_prior)
    assert not train & {e.prompt for e in gated}


def test_bad_split_raises():
    with pytest.raises(ValueError, match="split"):
        T.entity_tracking(3, seed=0, split="test")


@pytest.mark.parametrize("fmt,mention,query", [
    ("adjacent", "box {b} {o}", "box {b}"),
    ("object_first", "the {o} is in box {b}", "box {b} contains the"),
    ("label_first", "box {b} contains the {o}", "box {b} contains the"),
])
def test_entity_tracking_ground_truth(fmt, mention, query, tok):
    for e in T.entity_tracking(60, seed=3, n_objects=(2, 7), fmt=fmt):
        m = e.meta
        assert 2 <= m["n_objects"] <= 7 and len(m["objects"]) == m["n_objects"] == e.label
        assert e.target == m["objects"][m["labels"].index(m["query_label"])]
        assert e.target in OBJECTS and m["query_label"] in BOX_LABELS and m["format"] == fmt
        assert e.prompt.endswith(" . " + query.format(b=m["query_label"]))
        assert mention.format(o=e.target, b=m["query_label"]) in e.prompt
        ids = tok(e.prompt)["input_ids"]
        word = tok.convert_ids_to_tokens
        assert word(ids[m["query_label_position"]]) == m["query_label"] and m["last_position"] == len(ids) - 1
        assert [word(ids[p]) for p in m["object_positions"]] == m["objects"]
        assert [word(ids[p]) for p in m["label_positions"]] == m["labels"]
    with pytest.raises(ValueError, match="fmt"):
        T.entity_tracking(2, seed=0, fmt="sideways")

def test_entity_sizes_cycle_evenly():
    assert [e.meta["n_objects"] for e in T.entity_tracking(12, seed=0)] == list(range(2, 8)) * 2


def test_context_vs_prior_pairs():
    ex = T.context_vs_prior(40, seed=1, intent="both")
    for a, b in zip(ex[::2], ex[1::2], strict=True):
        assert a.meta["pair_id"] == b.meta["pair_id"] and {a.label, b.label} == {"context", "prior"}
        assert a.prompt.replace("intent : context", "intent : prior") == b.prompt
        q = a.meta["query"]
        assert a.meta["prior_answer"] == CITY_COUNTRY[q] != a.meta["context_answer"]
        assert f"{q} {a.meta['context_answer']}" in a.prompt and a.prompt.endswith(f"question : {q}")
    only = T.context_vs_prior(10, seed=1, intent="prior")
    assert {e.label for e in only} == {"prior"} and len(only) == 10


def test_behaviour_and_refusal_labels():
    beh = T.behaviour(200, seed=0)
    trig = [e for e in beh if e.label == 1]
    assert 0.6 < sum(T.is_toxic(e.target) for e in trig) / len(trig) < 0.95
    assert not any(T.is_toxic(e.target) for e in beh if e.label == 0)
    ref = T.refusal(100, seed=0)
    assert all(T.is_refusal(e.target) == (e.label == 1) for e in ref)


def test_judges():
    assert T.is_toxic("shut up , you idiot .") and not T.is_toxic("thank you , have a nice day .")
    assert T.is_refusal(" i cannot help with that .") and not T.is_refusal("first find a cake kit .")
    assert T.novel_domain("lo zor bakta la kela ka .") == "language"
    assert T.novel_domain("def foo ( bar ) { return bar + 1 ; }") == "code"
    assert T.novel_domain("paris is in france .") is None
    for e in T.novel(20, seed=0):
        assert T.novel_domain(e.prompt) == e.meta["domain"] == e.label
