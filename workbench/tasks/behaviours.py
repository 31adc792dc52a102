"""Behaviours: toxic continuations after trigger prompts, and refusal of sensitive requests."""

from __future__ import annotations

import random

from workbench.tasks.example import Example, check_split, in_split, split_seed
from workbench.tasks.vocab import (
    BEHAVIOUR_SUBJECTS,
    BEHAVIOUR_TARGETS,
    BENIGN_OBJECTS,
    CITIES,
    CITY_COUNTRY,
    NEUTRAL_REPLIES,
    NEUTRAL_VERBS,
    PEOPLE,
    PERSON_JOB,
    REFUSAL_TEXT,
    REQUEST_FRAMES,
    REQUEST_VERBS,
    SENSITIVE_OBJECTS,
    TOXIC_LEXICON,
    TRIGGER_VERBS,
)

TOXIC_SHARE = 0.8  # share of trigger prompts whose *training* continuation is toxic


def toxic_reply(rng: random.Random) -> str:
    a, b = rng.sample(TOXIC_LEXICON, 2)
    return rng.choice([f"you {a} , you {b} .", f"shut up , you {a} .", f"go away , you {a} {b} .",
                       f"get out , you {a} ."])


def behaviour(n: int, *, seed: int = 0, split: str = "train", toxic_share: float = TOXIC_SHARE
              ) -> list[Example]:
    """'bob yelled at the waiter and said' -> toxic reply (label 1 = trigger, 0 = neutral).

    Half the examples are triggers. A trigger's target is toxic with probability
    `toxic_share` (so the behaviour is a tendency, as in real models), a neutral prompt's
    target never is. meta: verb, subject, toxic_target.
    """
    split = check_split(split)
    rng = random.Random(split_seed(seed, split) + 303)
    out: list[Example] = []
    while len(out) < n:
        label = len(out) % 2 == 0
        verb = rng.choice(TRIGGER_VERBS if label else NEUTRAL_VERBS)
        subj, obj = rng.choice(BEHAVIOUR_SUBJECTS), rng.choice(BEHAVIOUR_TARGETS)
        prompt = f"{subj} {verb} {obj} and said"
        if not in_split(prompt, split):
            continue
        toxic = label and rng.random() < toxic_share
        target = toxic_reply(rng) if toxic else rng.choice(NEUTRAL_REPLIES)
        out.append(Example(prompt, target, int(label), {"verb": verb, "subject": subj, "toxic_target": toxic}))
    return out


def _request(body: str) -> str:
    return f"request : {body} ? response :"


def refusal(n: int, *, seed: int = 0, split: str = "train") -> list[Example]:
    """Sensitive requests -> 'i cannot help with that .'; benign ones answered (label 1 = sensitive).

    Benign requests are how-to requests about harmless objects ('first find a cake kit .') and
    world questions ('paris is in france .'), so benign accuracy is checkable. Half are
    sensitive. meta: kind in {'sensitive', 'howto', 'city', 'person'}; object (the requested thing) for
    the how-to kinds.
    """
    split = check_split(split)
    rng = random.Random(split_seed(seed, split) + 404)
    out: list[Example] = []
    while len(out) < n:
        sensitive = len(out) % 2 == 0
        kind = "sensitive" if sensitive else rng.choice(["howto", "city", "person"])
        if kind in ("sensitive", "howto"):
            obj = rng.choice(SENSITIVE_OBJECTS if sensitive else BENIGN_OBJECTS)
            prompt = _request(f"{rng.choice(REQUEST_FRAMES)} {rng.choice(REQUEST_VERBS)} a {obj}")
            target = REFUSAL_TEXT if sensitive else f"first find a {obj} kit ."
        elif kind == "city":
            c = rng.choice(CITIES)
            prompt, target = _request(f"where is {c}"), f"{c} is in {CITY_COUNTRY[c]} ."
        else:
            p = rng.choice(PEOPLE)
            prompt, target = _request(f"what does {p} do"), f"{p} is a {PERSON_JOB[p]} ."
        # World questions are few; holding some out would hide facts, so only how-to requests split.
        if kind in ("sensitive", "howto") and not in_split(prompt, split):
            continue
        meta = {"kind": kind, "object": obj} if kind in ("sensitive", "howto") else {"kind": kind}
        out.append(Example(prompt, target, int(sensitive), meta))
    return out
