"""Data-parallel training over local CPU processes (gloo), for crowded machines.

Every rank draws the same global batch from the recipe's seeded stream and keeps every
world-th sequence; gradients are summed, so the run follows the single-process one up to
floating-point summation order (see `train._my_parts`).
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

from workbench.zoo.recipes import Recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, recipe: Recipe, parent_dir, target: str, log_path: str,
               progress: bool) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from workbench.zoo.build import train_organism

    model, tok, log = train_organism(recipe, Path(parent_dir) if parent_dir else None,
                                     progress=progress and rank == 0)
    if rank == 0:
        model.save_pretrained(target)
        tok.save_pretrained(target)
        Path(log_path).write_text(json.dumps({"curves": log.curves, "seconds": log.seconds, "steps": log.steps}))
    dist.destroy_process_group()


def train_parallel(recipe: Recipe, parent_dir: Path | None, target: Path, workers: int, progress: bool = True
                   ) -> dict:
    """Train `recipe` on `workers` processes, save to `target`; returns {'curves', 'seconds', 'steps'}."""
    import torch.multiprocessing as mp

    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log_path = str(Path(tmp) / "log.json")
        mp.spawn(_rank_main, args=(workers, _free_port(), recipe, str(parent_dir) if parent_dir else None,
                                   str(target), log_path, progress), nprocs=workers)
        log = json.loads(Path(log_path).read_text())
    log["curves"] = {int(k): v for k, v in log["curves"].items()}
    return log
