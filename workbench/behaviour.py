"""Behaviour and capability evaluation of a Subject, with whatever edits/interventions are active.

    evaluate_behaviour(subject, trigger_prompts, judge=is_toxic).rate       # greedy, 20 new tokens
    evaluate_capability(subject, {"facts": fact_recall, "entities": entity_accuracy}).scores

A judge is any callable on a continuation's text returning a bool or a score in [0, 1]: the
organisms' toxic lexicon, or a HF classifier wrapped in a function for real models. A task is
any callable `task(subject) -> float` (e.g. a `workbench.tasks` metric with its data bound by
`functools.partial`), so the same code measures a model before and after an edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.results import Result


@dataclass(frozen=True)
class BehaviourEval(Result):
    """Judged greedy continuations: `rate` is the mean judgement over prompts."""

    prompts: tuple[str, ...]
    continuations: tuple[str, ...]
    scores: tuple[float, ...]
    max_new_tokens: int

    @property
    def rate(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"prompt": self.prompts, "continuation": self.continuations, "score": self.scores})

    def plot(self):
        import plotly.express as px

        return px.histogram(self.to_frame(), x="score", title=f"Judged continuations (rate {self.rate:.3f})")


@dataclass(frozen=True)
class CapabilityEval(Result):
    """One score per named task."""

    scores: tuple[tuple[str, float], ...]

    def scores_dict(self) -> dict[str, float]:
        return dict(self.scores)

    def __getitem__(self, name: str) -> float:
        return self.scores_dict()[name]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"task": k, "score": v} for k, v in self.scores])

    def plot(self):
        import plotly.express as px

        return px.bar(self.to_frame(), x="task", y="score", title="Capability")


def _judge_score(judge: Callable[[str], Any], text: str) -> float:
    v = judge(text)
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"judge: expected a bool or a number for each continuation, got {type(v).__name__}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"judge: expected a score in [0, 1], got {v}")
    return v


def evaluate_behaviour(subject, prompts: Sequence[str], judge: Callable[[str], Any], *, max_new_tokens: int = 20,
                       batch_size: int = 64, progress: bool | None = None) -> BehaviourEval:
    """Greedy continuation of every prompt, each judged by `judge(continuation)`."""
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts: expected a non-empty list of strings")
    if not callable(judge):
        raise ValueError(f"judge: expected a callable text -> bool/score, got {type(judge).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    prompts = list(prompts)
    conts: list[str] = []
    chunks = range(0, len(prompts), batch_size)
    show = progress if progress is not None else len(chunks) > 4
    for i in tqdm(chunks, desc="generate", disable=not show, leave=False):
        conts += subject.generate(prompts[i:i + batch_size], max_new_tokens=max_new_tokens, do_sample=False)
    return BehaviourEval(tuple(prompts), tuple(conts), tuple(_judge_score(judge, c) for c in conts), max_new_tokens)


def evaluate_capability(subject, tasks: Mapping[str, Callable[[Any], Any]]) -> CapabilityEval:
    """`{name: task(subject)}` for every task; a task returns a number (or a Result with `.accuracy`)."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError("tasks: expected a non-empty mapping name -> callable(subject) -> float")
    out = []
    for name, task in tasks.items():
        if not callable(task):
            raise ValueError(f"tasks[{name!r}]: expected a callable(subject) -> float, got {type(task).__name__}")
        v = task(subject)
        v = getattr(v, "accuracy", v)
        try:
            out.append((str(name), float(v)))
        except (TypeError, ValueError):
            raise ValueError(f"tasks[{name!r}]: returned {type(v).__name__}, expected a number") from None
    return CapabilityEval(tuple(out))
