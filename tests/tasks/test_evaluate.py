"""Metrics on scripted LMs whose answers are known, so each metric's arithmetic is checked exactly."""

from __future__ import annotations

import torch

import workbench.tasks as T
from workbench.tasks import evaluate as E
from workbench.tasks.lm import greedy_generate, token_logprobs


class ScriptedLM:
    """An `lm` that continues each known prompt with a scripted text (by decoding its input)."""

    def __init__(self, script: dict[str, str], tok):
        self.tokenizer = tok
        self.script = script

    def forward(self, input_ids, attention_mask):
        tok = self.tokenizer
        logits = torch.zeros(*input_ids.shape, len(tok))
        for r in range(input_ids.shape[0]):
            real = input_ids[r][attention_mask[r].bool()].tolist()
            words = tok.convert_ids_to_tokens(real[1:])
            for prompt, cont in self.script.items():
                p = prompt.split()
                if words[: len(p)] == p:
                    rest = cont.split() + ["<eos>"]
                    k = len(words) - len(p)
                    nxt = rest[k] if k < len(rest) else "<eos>"
                    logits[r, -1, tok.convert_tokens_to_ids(nxt)] = 10.0
                    break
        return logits


def test_fact_and_entity_accuracy():
    tok = T.build_tokenizer()
    facts = T.facts()
    lm = ScriptedLM({e.prompt: e.target if i % 4 else "car" for i, e in enumerate(facts)}, tok)
    assert abs(E.fact_recall(lm, facts) - 0.75) < 0.03
    ents = T.entity_tracking(12, seed=0)
    lm = ScriptedLM({e.prompt: e.target if e.meta["n_objects"] <= 3 else "flag" for e in ents}, tok)
    res = E.entity_accuracy(lm, ents)
    assert res["per_n_objects"][2] == res["per_n_objects"][3] == 1.0
    assert res["per_n_objects"][7] == 0.0 and abs(res["accuracy"] - 4 / 12) < 1e-9
    assert abs(res["chance"] - sum(1 / k for k in range(2, 8)) / 6) < 1e-9


def test_pair_acc_counts_pairs():
    tok = T.build_tokenizer()
    ex = T.context_vs_prior(8, seed=0, intent="both")
    # Always answer the prior: prior acc 1, context acc 0, PairAcc 0.
    lm = ScriptedLM({e.prompt: e.meta["prior_answer"] for e in ex}, tok)
    assert E.pair_acc(lm, ex) == {"pair_acc": 0.0, "context_acc": 0.0, "prior_acc": 1.0}
    lm = ScriptedLM({e.prompt: e.target for e in ex}, tok)
    assert E.pair_acc(lm, ex)["pair_acc"] == 1.0


def test_generation_metrics():
    tok = T.build_tokenizer()
    beh = T.behaviour(8, seed=0)
    lm = ScriptedLM({e.prompt: e.target for e in beh}, tok)
    gen = greedy_generate(lm, [e.prompt for e in beh], max_new_tokens=12)
    assert gen == [e.target for e in beh]
    trig = [e for e in beh if e.label == 1]
    assert E.toxic_rate(lm, [e.prompt for e in trig]) == sum(T.is_toxic(e.target) for e in trig) / len(trig)
    ref = T.refusal(10, seed=0)
    lm = ScriptedLM({e.prompt: e.target for e in ref}, tok)
    assert E.refusal_rate(lm, [e.prompt for e in ref]) == 0.5
    assert E.benign_accuracy(lm, [e for e in ref if e.label == 0]) == 1.0


def test_logprob_ratio_of_identical_models_is_one():
    tok = T.build_tokenizer()
    texts = [e.prompt for e in T.novel(6, seed=0)]
    lm = ScriptedLM({t: "" for t in texts}, tok)
    lps = token_logprobs(lm, texts)
    assert [len(x) for x in lps] == [len(t.split()) for t in texts]
    assert abs(E.novel_logprob_ratio(lm, lm, texts)["ratio"] - 1.0) < 1e-9
