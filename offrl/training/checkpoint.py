"""Checkpoints for exact resume: agent + sampler + loop state in one file, written atomically.

A checkpoint is a dict saved with `torch.save`:

    format        CHECKPOINT_FORMAT
    step          gradient steps done (per member)
    algo          algorithm name
    config        RunConfig.to_dict() — enough to rebuild the agent without the run directory
    normalization the observation mean/std and reward scaling the agent was trained with
    agent         agent.state_dict()  (online + target nets, optimisers, RNG, step)
    sampler       sampler.state_dict() (its generators)
    loop          the loop's own state: metric sums of the current logging interval, RNG states

Written to `<path>.tmp`, flushed to disk, then `os.replace`d over `path`: a crash mid-write
leaves the previous checkpoint intact, never half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from offrl.errors import UserError

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plus the format number) to `path`. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    Checkpoints hold optimiser and RNG states as well as tensors, so they are unpickled in
    full: load only checkpoints you (or a run you trust) wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not an offrl checkpoint of format {CHECKPOINT_FORMAT} "
                        f"(found {found!r})")
    return state


def global_rng_state() -> dict[str, Any]:
    """The process-wide RNG states (torch CPU and CUDA, numpy, random). Agents and samplers
    keep their own generators; these are saved too so that code relying on global RNG
    (e.g. a third-party module's init) also resumes exactly."""
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
