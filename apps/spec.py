"""Pipeline files: the TOML schema and its validation.

Everything is checked before any model is loaded, and every error names the file, the key
path and what was expected, e.g. `demo.toml: steps[2].alpha: expected a number, got "high"`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED = object()


class PipelineError(ValueError):
    pass


@dataclass(frozen=True)
class Field:
    type: Any  # a type or tuple of types
    default: Any = REQUIRED
    choices: tuple = ()
    help: str = ""


def _tname(t: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list",
             dict: "a table"}
    if isinstance(t, tuple):
        return " or ".join(str(names.get(x, x.__name__)) for x in t)
    return str(names.get(t, t.__name__))


def check_fields(file: Path, path: str, table: Any, schema: dict[str, Field]) -> dict[str, Any]:
    """Validate one table against `schema`; return it with defaults filled in."""
    if not isinstance(table, dict):
        raise PipelineError(f"{file.name}: {path}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise PipelineError(f"{file.name}: {path}.{unknown[0]}: unknown key; expected one of {sorted(schema)}")
    out: dict[str, Any] = {}
    for key, f in schema.items():
        if key not in table:
            if f.default is REQUIRED:
                raise PipelineError(f"{file.name}: {path}.{key}: missing; expected {_tname(f.type)}"
                                    + (f" ({f.help})" if f.help else ""))
            out[key] = f.default
            continue
        v = table[key]
        types = f.type if isinstance(f.type, tuple) else (f.type,)
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if not ok and float in types and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise PipelineError(f"{file.name}: {path}.{key}: expected {_tname(f.type)}, got {v!r}")
        if f.choices and v not in f.choices:
            raise PipelineError(f"{file.name}: {path}.{key}: expected one of {list(f.choices)}, got {v!r}")
        out[key] = v
    return out


SUBJECT = {
    "model": Field(str, help="zoo name (e.g. 'base'), local HF checkpoint directory or hub id"),
    "engine": Field(str, "tl", ("tl", "nnsight")),
    "adapter": Field(str, None, help="PEFT adapter directory"),
}
DATASET = {
    "builder": Field(str, None, help="a workbench.tasks builder, e.g. 'behaviour'"),
    "jsonl": Field(str, None, help="a JSONL file of {text, label}"),
    "text": Field(str, None, help="a plain text file (for perplexity)"),
    "n": Field(int, 200),
    "seed": Field(int, 0),
    "split": Field(str, "eval", ("train", "eval")),
    "options": Field(dict, {}),
}
TOP = {
    "title": Field(str, "pipeline"),
    "seed": Field(int, 0),
    "subjects": Field(dict),
    "datasets": Field(dict, {}),
    "steps": Field(list, []),
    "evaluations": Field(list, []),
}


@dataclass(frozen=True)
class Spec:
    file: Path
    title: str
    seed: int
    subjects: dict[str, dict]
    datasets: dict[str, dict]
    steps: list[dict]
    evaluations: list[dict]


def load_spec(file: str | Path, *, step_kinds: dict, eval_kinds: dict) -> Spec:
    file = Path(file)
    if not file.exists():
        raise PipelineError(f"{file}: no such pipeline file")
    try:
        raw = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{file.name}: not valid TOML: {e}") from None
    top = check_fields(file, "(top)", raw, TOP)
    subjects = {k: check_fields(file, f"subjects.{k}", v, SUBJECT) for k, v in top["subjects"].items()}
    if not subjects:
        raise PipelineError(f"{file.name}: subjects: expected at least one [subjects.NAME] table")
    datasets = {}
    for k, v in top["datasets"].items():
        d = check_fields(file, f"datasets.{k}", v, DATASET)
        given = [s for s in ("builder", "jsonl", "text") if d[s] is not None]
        if len(given) != 1:
            raise PipelineError(f"{file.name}: datasets.{k}: expected exactly one of builder, jsonl, text")
        for s in ("jsonl", "text"):
            if d[s] is not None:
                p = (file.parent / d[s]).resolve()
                if not p.exists():
                    raise PipelineError(f"{file.name}: datasets.{k}.{s}: file not found: {p}")
                d[s] = str(p)
        if d["builder"] is not None:
            from workbench import tasks

            if not callable(getattr(tasks, d["builder"], None)):
                raise PipelineError(f"{file.name}: datasets.{k}.builder: unknown builder {d['builder']!r}")
        datasets[k] = d

    def entries(name: str, kinds: dict) -> list[dict]:
        out, seen = [], set()
        for i, e in enumerate(top[name]):
            path = f"{name}[{i}]"
            if not isinstance(e, dict):
                raise PipelineError(f"{file.name}: {path}: expected a table")
            kind = e.get("kind")
            if kind not in kinds:
                raise PipelineError(f"{file.name}: {path}.kind: expected one of {sorted(kinds)}, got {kind!r}")
            common = {"id": Field(str), "kind": Field(str), "subject": Field(str)}
            cfg = check_fields(file, path, e, common | kinds[kind].schema)
            if cfg["id"] in seen:
                raise PipelineError(f"{file.name}: {path}.id: duplicate id {cfg['id']!r}")
            seen.add(cfg["id"])
            if cfg["subject"] not in subjects:
                raise PipelineError(f"{file.name}: {path}.subject: expected one of {sorted(subjects)}, "
                                    f"got {cfg['subject']!r}")
            for key in kinds[kind].schema:
                if key.startswith("dataset") and cfg.get(key) is not None and cfg[key] not in datasets:
                    raise PipelineError(f"{file.name}: {path}.{key}: no dataset named {cfg[key]!r}; "
                                        f"defined: {sorted(datasets)}")
            for key in ("tuned", "transfer_to"):  # keys that name other subjects
                names = cfg.get(key)
                for nm in ([names] if isinstance(names, str) else names or []):
                    if nm not in subjects:
                        raise PipelineError(f"{file.name}: {path}.{key}: expected one of {sorted(subjects)}, "
                                            f"got {nm!r}")
            for key in kinds[kind].needs_steps:
                if cfg.get(key) is not None and cfg[key] not in seen:
                    raise PipelineError(f"{file.name}: {path}.{key}: expected the id of an earlier step, "
                                        f"got {cfg[key]!r}")
            out.append(cfg)
        return out

    steps = entries("steps", step_kinds)
    evals = entries("evaluations", eval_kinds)
    return Spec(file, top["title"], top["seed"], subjects, datasets, steps, evals)
