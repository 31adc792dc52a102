"""Result: the base of every method's return value.

Each method returns one frozen dataclass type with `.to_frame()` (a long pandas frame),
`.plot()` (a plotly Figure, never shown) and `.save(dir)` / `Type.load(dir)`. Saving is generic:
tensor and ndarray fields go to safetensors, everything else to JSON (Sites, pandas frames and
nested dataclasses are encoded), so a subclass only declares fields.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from workbench.sites import Site

RESULT_TYPES: dict[str, type[Result]] = {}


class Result:
    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        RESULT_TYPES[cls.__name__] = cls

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def plot(self):
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        config = {f.name: _enc(getattr(self, f.name), f.name, tensors) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        (p / "result.json").write_text(json.dumps({"type": type(self).__name__, "fields": config}, indent=1))
        save_file(tensors, str(p / "tensors.safetensors"))
        return p

    @classmethod
    def load(cls, path: str | Path):
        from safetensors.torch import load_file

        p = Path(path)
        if not (p / "result.json").exists():
            raise FileNotFoundError(f"{cls.__name__}.load: no result.json in {str(p)!r}")
        meta = json.loads((p / "result.json").read_text())
        typ = RESULT_TYPES.get(meta["type"])
        if typ is None or (cls is not Result and not issubclass(typ, cls)):
            raise ValueError(f"{cls.__name__}.load: {str(p)!r} holds a {meta['type']}")
        tensors = load_file(str(p / "tensors.safetensors"))
        return typ(**{k: _dec(v, tensors) for k, v in meta["fields"].items()})


def _enc(v: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(v, Tensor):
        tensors[key] = v.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(v, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(v))
        return {"__ndarray__": key}
    if isinstance(v, Site):
        return {"__site__": v.to_json()}
    if isinstance(v, pd.DataFrame):
        return {"__frame__": json.loads(v.to_json(orient="split"))}
    if isinstance(v, Result) and dataclasses.is_dataclass(v):
        return {"__result__": type(v).__name__,
                "fields": {f.name: _enc(getattr(v, f.name), f"{key}.{f.name}", tensors) for f in dataclasses.fields(v)}}
    if isinstance(v, dict):
        return {"__dict__": [[_enc(k, f"{key}.k{i}", tensors), _enc(x, f"{key}.{i}", tensors)]
                             for i, (k, x) in enumerate(v.items())]}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x, f"{key}.{i}", tensors) for i, x in enumerate(v)]}
    if isinstance(v, list):
        return [_enc(x, f"{key}.{i}", tensors) for i, x in enumerate(v)]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _dec(v: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(v, dict):
        if "__tensor__" in v:
            return tensors[v["__tensor__"]]
        if "__ndarray__" in v:
            return tensors[v["__ndarray__"]].numpy()
        if "__site__" in v:
            return Site.from_json(v["__site__"])
        if "__frame__" in v:
            d = v["__frame__"]
            return pd.DataFrame(d["data"], index=d["index"], columns=d["columns"])
        if "__result__" in v:
            return RESULT_TYPES[v["__result__"]](**{k: _dec(x, tensors) for k, x in v["fields"].items()})
        if "__dict__" in v:
            return {_dec(k, tensors): _dec(x, tensors) for k, x in v["__dict__"]}
        if "__tuple__" in v:
            return tuple(_dec(x, tensors) for x in v["__tuple__"])
        return v
    if isinstance(v, list):
        return [_dec(x, tensors) for x in v]
    return v
