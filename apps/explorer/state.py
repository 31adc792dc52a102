"""Shared state of the explorer: which pair, which prompts, cached models, readable failures.

Every page starts with `ctx = sidebar()`: it renders the pair and prompt-set pickers (the same
keys on every page, so the choice survives page switches) and returns the loaded pair. Models are
`st.cache_resource` (shared, never mutated: edits go to per-session copies); results are
`st.cache_data` in `compute.py`. `failsafe(...)` turns any exception into an `st.error` message.
"""

from __future__ import annotations

import importlib
import json
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

DEMO = "demo: tiny random pair"
DEMO_MOE = "demo-moe: tiny random MoE pair"
LOCAL = "two local HF checkpoints / hub ids"
PROMPT_SETS = ("mixed", "entity tracking", "facts", "behaviour", "refusal", "novel", "custom")
# The task each organism was tuned on: the first prompt set shown for it.
DEFAULT_SET = {"entity-tuned": "entity tracking", "novel-tuned": "novel", "moe": "refusal"}


@dataclass(frozen=True)
class Ctx:
    key: str  # identifies the pair in caches
    pair: object  # ModelPair
    prompts: tuple[str, ...]
    prompt_set: str


# --- failures -------------------------------------------------------------------------------------
@contextmanager
def failsafe(what: str) -> Iterator[None]:
    """Show a readable `st.error` instead of a traceback (details folded away for bug reports)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - the app must never show a raw traceback
        st.error(f"{what} failed: {type(e).__name__}: {e}")
        with st.expander("details"):
            st.code("".join(traceback.format_exception(e)[-6:]), language="text")


def optional(module: str):
    """Import a method module that may not have landed yet; None (and a message) if it is missing."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        st.info(f"Not available yet: `{module}` could not be imported ({type(e).__name__}: {e}).")
        return None


def has(module, *names: str) -> bool:
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        st.info(f"Not available yet: `{module.__name__}` has no {', '.join(missing)}.")
    return not missing


# --- pairs ----------------------------------------------------------------------------------------
def zoo_choices() -> list[str]:
    """Zoo pairs whose checkpoints are present ('moe' pairs the MoE organism with itself)."""
    try:
        from workbench import zoo
        from workbench.zoo.recipes import RECIPES
    except Exception:  # noqa: BLE001
        return []
    out = []
    for name in zoo.names():
        try:
            zoo.path(name)
            parent = RECIPES[name].parent
            if parent is not None:
                zoo.path(parent)
        except Exception:  # noqa: BLE001
            continue
        out.append(f"zoo: {name}" if parent is not None else f"zoo: {name} (vs itself)")
    return sorted(out, key=lambda c: c.endswith("(vs itself)"))  # tuned pairs first


def pair_choices() -> list[str]:
    return zoo_choices() + [DEMO, DEMO_MOE, LOCAL]


@st.cache_resource(show_spinner="Loading the model pair...", max_entries=4)
def load_pair(choice: str, base_path: str = "", tuned_path: str = "", engine: str = "tl"):
    from workbench.models import ModelPair, load

    if choice.startswith("zoo: "):
        from workbench import zoo

        name = choice.removeprefix("zoo: ").removesuffix(" (vs itself)")
        if choice.endswith("(vs itself)"):
            path = str(zoo.path(name))
            return ModelPair(load(path, engine=engine, name=name), load(path, engine=engine, name=f"{name} (copy)"))
        return zoo.pair(name, engine=engine)
    if choice in (DEMO, DEMO_MOE):
        from apps.explorer.demo import demo_pair_paths

        b, t = demo_pair_paths("demo" if choice == DEMO else "demo-moe")
        return ModelPair(load(str(b), engine=engine, name="demo-base"), load(str(t), engine=engine, name="demo-tuned"))
    if choice == LOCAL:
        if not base_path or not tuned_path:
            raise ValueError("enter both a base and a tuned checkpoint (local directory or hub id)")
        return ModelPair(load(base_path, engine=engine), load(tuned_path, engine=engine))
    raise ValueError(f"unknown pair choice {choice!r}")


# --- prompts --------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False)
def task_prompts(name: str, n: int = 8, seed: int = 0) -> tuple[str, ...]:
    """Held-out prompts of one task (prompt + target as one text), or a mix of all tasks."""
    from workbench import tasks

    builders = {"entity tracking": lambda k: tasks.entity_tracking(k, seed=seed, split="eval"),
                "facts": lambda k: tasks.facts(k, seed=seed, split="eval"),
                "behaviour": lambda k: tasks.behaviour(k, seed=seed, split="eval"),
                "refusal": lambda k: tasks.refusal(k, seed=seed, split="eval"),
                "novel": lambda k: tasks.novel(k, seed=seed, split="eval")}
    if name == "mixed":
        return tuple(e.text for b in builders.values() for e in b(max(1, n // len(builders))))
    return tuple(e.text for e in builders[name](n))


def parse_upload(name: str, data: bytes) -> list[str]:
    """Texts from an uploaded .txt (one per line) or .jsonl ({"text": ...} or {"prompt": ...}) file.

    Only ever decoded as UTF-8 text: uploads are never unpickled or executed."""
    text = data.decode("utf-8", errors="replace")
    if Path(name).suffix.lower() == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("text", row.get("prompt")), str):
                    raise ValueError(f"line {i + 1}: expected an object with a 'text' (or 'prompt') string")
                out.append(row.get("text", row.get("prompt")))
        return out
    return [t.strip() for t in text.splitlines() if t.strip()]


# --- the sidebar ----------------------------------------------------------------------------------
def _remember(key: str, default):
    """Mirror a widget value into a plain session key, so it survives switching pages."""
    store = f"_keep_{key}"
    if key in st.session_state:
        st.session_state[store] = st.session_state[key]
    return st.session_state.get(store, default)


def sidebar() -> Ctx:
    """Pair + prompt-set pickers; stops the page with a readable message if the pair cannot load."""
    sb = st.sidebar
    sb.markdown("### Model pair")
    choices = pair_choices()
    cur = _remember("pair_choice", choices[0])
    choice = sb.selectbox("pair", choices, index=choices.index(cur) if cur in choices else 0, key="pair_choice",
                          help="A zoo organism next to its parent, a tiny random demo pair, or any two checkpoints.")
    base_path = tuned_path = ""
    if choice == LOCAL:
        base_path = sb.text_input("base checkpoint", _remember("base_path", ""), key="base_path")
        tuned_path = sb.text_input("tuned checkpoint", _remember("tuned_path", ""), key="tuned_path")
    engine = sb.selectbox("engine", ["tl", "nnsight"], index=["tl", "nnsight"].index(_remember("engine", "tl")),
                          key="engine")
    sb.markdown("### Prompt set")
    ps = _remember("prompt_set", next((v for k, v in DEFAULT_SET.items() if k in choice), "mixed"))
    prompt_set = sb.selectbox("prompts", PROMPT_SETS, index=PROMPT_SETS.index(ps), key="prompt_set")
    if prompt_set == "custom":
        raw = sb.text_area("one prompt per line", _remember("custom_prompts", "the apple is in box a . box a contains the"),
                           key="custom_prompts")
        prompts = [t.strip() for t in raw.splitlines() if t.strip()]
        up = sb.file_uploader("or upload .txt / .jsonl", type=["txt", "jsonl"], key="prompt_file")
        if up is not None:
            with failsafe("Reading the uploaded prompts"):
                prompts = parse_upload(up.name, up.getvalue())
    else:
        n = sb.slider("how many", 4, 64, int(_remember("n_prompts", 10)), step=2, key="n_prompts")
        prompts = list(task_prompts(prompt_set, n))
    if not prompts:
        st.warning("The prompt set is empty: add at least one prompt in the sidebar.")
        st.stop()
    pair = None
    with failsafe("Loading the pair"):
        pair = load_pair(choice, base_path, tuned_path, engine)
    if pair is None:
        st.stop()
    sb.caption(f"{pair.base.name} -> {pair.tuned.name}: {pair.arch.family}, {pair.arch.n_layers} layers, "
               f"d_model {pair.arch.d_model}" + (f", {pair.arch.n_experts} experts" if pair.arch.is_moe else ""))
    key = f"{choice}|{base_path}|{tuned_path}|{engine}"
    return Ctx(key=key, pair=pair, prompts=tuple(prompts), prompt_set=prompt_set)


def session_copy(ctx: Ctx, which: str = "tuned"):
    """A per-session private copy of one model of the pair (edits and switches go here, never to the
    shared cached model)."""
    from workbench.diff import copy_subject

    k = f"_copy::{ctx.key}::{which}"
    if k not in st.session_state:
        src = getattr(ctx.pair, which)
        st.session_state[k] = copy_subject(src, name=f"{src.name} (edited)")
    return st.session_state[k]
