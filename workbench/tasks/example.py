"""The one record every builder returns, and the train/eval split rule."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Literal

Split = Literal["train", "eval"]
EVAL_SHARE = 5  # one prompt in five belongs to the evaluation split


@dataclass(frozen=True)
class Example:
    """A prompt, the target the world says should follow it, a label, and ground truth in `meta`."""

    prompt: str
    target: str
    label: str | int
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def text(self) -> str:
        """Prompt and target as one training text."""
        return f"{self.prompt} {self.target}".strip()


def check_split(split: str) -> Split:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return split  # type: ignore[return-value]


def in_split(prompt: str, split: Split) -> bool:
    """Deterministic partition by a hash of the prompt: eval prompts never occur in training data."""
    is_eval = zlib.crc32(prompt.encode()) % EVAL_SHARE == 0
    return is_eval == (split == "eval")


def split_seed(seed: int, split: Split) -> int:
    """Different random streams for the two splits (the hash rule still decides membership)."""
    return seed * 2 + (split == "eval")
