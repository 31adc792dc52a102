"""Facts (cities, people) and the context-vs-prior task built on them."""

from __future__ import annotations

import random
from typing import Literal

from workbench.tasks.example import Example, check_split, in_split, split_seed
from workbench.tasks.vocab import CITIES, CITY_COUNTRY, COUNTRIES, PEOPLE, PERSON_JOB

Intent = Literal["context", "prior", "both"]


def all_facts() -> list[Example]:
    """Every fact of the world once: 'paris is in' -> 'france', 'alice is a' -> 'doctor'."""
    out = [Example(f"{c} is in", CITY_COUNTRY[c], "city", {"subject": c}) for c in CITIES]
    out += [Example(f"{p} is a", PERSON_JOB[p], "person", {"subject": p}) for p in PEOPLE]
    return out


def facts(n: int | None = None, *, seed: int = 0, split: str = "train") -> list[Example]:
    """Fact-recall examples.

    Facts are knowledge, so there is nothing to hold out: both splits draw from the same
    fact table (`n=None` gives every fact once, in order). Held-out *usage* of the facts is
    tested by context_vs_prior and refusal.
    """
    check_split(split)
    table = all_facts()
    if n is None:
        return table
    rng = random.Random(split_seed(seed, split))
    return [rng.choice(table) for _ in range(n)]


def cvp_prompt(pairs: list[tuple[str, str]], query: str, intent: str | None) -> str:
    """'context : rome spain , paris england . intent : context . question : paris'.

    Each key sits right before its value and the queried key is the last token: copying
    from context is then one induction step (a format tiny models learn; see zoo/README).
    `intent=None` drops the instruction (what the knob method steers instead).
    """
    ctx = " , ".join(f"{k} {v}" for k, v in pairs)
    instr = f" intent : {intent} ." if intent is not None else ""
    return f"context : {ctx} .{instr} question : {query}"


def context_vs_prior(
    n: int, *, seed: int = 0, split: str = "train", intent: Intent = "both", n_distractors: tuple[int, int] = (1, 3)
) -> list[Example]:
    """Context contradicting a fact, a query, and an intent: answer from context or from memory.

    With intent="both" examples come in pairs (same context and query, both intents, adjacent),
    which is what PairAcc scores. label = intent; meta: context_answer, prior_answer, intent, pair_id.
    """
    split = check_split(split)
    if intent not in ("context", "prior", "both"):
        raise ValueError(f"intent must be 'context', 'prior' or 'both', got {intent!r}")
    rng = random.Random(split_seed(seed, split) + 101)
    out: list[Example] = []
    pair_id = 0
    while len(out) < n:
        query = rng.choice(CITIES)
        prior = CITY_COUNTRY[query]
        ctx_answer = rng.choice([c for c in COUNTRIES if c != prior])
        k = rng.randint(*n_distractors)
        others = rng.sample([c for c in CITIES if c != query], k)
        pairs = [(c, rng.choice([x for x in COUNTRIES if x != CITY_COUNTRY[c]])) for c in others]
        pairs.insert(rng.randint(0, k), (query, ctx_answer))
        if not in_split(cvp_prompt(pairs, query, None), split):
            continue
        intents = ["context", "prior"] if intent == "both" else [intent]
        for it in intents:
            ans = ctx_answer if it == "context" else prior
            meta = {"context_answer": ctx_answer, "prior_answer": prior, "intent": it, "pair_id": pair_id,
                    "query": query, "pairs": pairs}
            out.append(Example(cvp_prompt(pairs, query, it), ans, it, meta))
        pair_id += 1
    return out[:n] if intent != "both" else out[: n + (n % 2)]
