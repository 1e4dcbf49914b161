"""What a run writes as it goes: metrics.csv, evaluations.csv, TensorBoard events, progress.

Losses stay on the device: `MetricAccumulator` adds each update's (S,) metric tensors into
running sums there and copies the interval means to the host once per logging interval.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

EVALUATION_COLUMNS = ["step", "seed", "episode", "env_seed", "return", "length",
                      "normalized_score"]


class MetricAccumulator:
    """Running sums of per-member metrics over one logging interval, kept on the device."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add one update's metrics, each an (S,) tensor. No host sync."""
        for name, value in metrics.items():
            value = value.detach()
            if name in self.sums:
                self.sums[name] += value
            else:
                self.sums[name] = value.to(torch.float32, copy=True)
        self.count += 1

    def means(self) -> dict[str, np.ndarray]:
        """{name: (S,) float64 mean over the interval}; one device-to-host copy. Then reset."""
        if not self.count:
            return {}
        names = list(self.sums)
        stacked = (torch.stack([self.sums[n] for n in names]) / self.count).cpu().double().numpy()
        self.sums, self.count = {}, 0
        return {n: stacked[i] for i, n in enumerate(names)}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: str | torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count = int(state["count"])


class CsvLog:
    """An append-only CSV file with a fixed header. Rows are flushed as they are written.

    The header is written with the first row (so metric columns can be learnt from the first
    update); a file that already has a header keeps it, and rows must fit it.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str] | None = None):
        self.path = Path(path)
        self.columns: list[str] | None = list(columns) if columns is not None else None
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            if header:
                if self.columns is not None and header != self.columns:
                    raise ValueError(f"{self.path} has columns {header}; expected {self.columns}")
                self.columns = header

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        new_file = not (self.path.is_file() and self.path.stat().st_size)
        if self.columns is None:
            self.columns = list(rows[0])
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="raise",
                                    lineterminator="\n")
            if new_file:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: _format(v) for k, v in row.items()})
            f.flush()

    def truncate_after_step(self, step: int) -> int:
        """Drop rows whose `step` column is greater than `step` (written after the checkpoint a
        run resumes from, so they would be written again). Returns how many were dropped."""
        if not self.path.is_file():
            return 0
        with open(self.path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
        if not lines:
            return 0
        header = next(csv.reader([lines[0]]))
        col = header.index("step")
        keep = [lines[0]] + [ln for ln in lines[1:] if ln.strip()
                             and int(next(csv.reader([ln]))[col]) <= step]
        dropped = len(lines) - len(keep)
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)
        return dropped


def _format(value: Any) -> Any:
    """CSV cell text: floats with full precision (repr round-trips), None as empty."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of a CSV file as dicts of strings ([] if there is no file)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(io.StringIO(f.read())))


class TensorBoardLog:
    """Scalars to TensorBoard when `torch.utils.tensorboard` and `tensorboard` are installed;
    does nothing otherwise. One tag per metric and member: `<group>/<name>/seed_<seed>`."""

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True,
                 purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def scalars(self, group: str, values: dict[str, np.ndarray], seeds: Sequence[int],
                step: int) -> None:
        if self.writer is None:
            return
        for name, per_member in values.items():
            for seed, v in zip(seeds, np.asarray(per_member).reshape(-1)):
                self.writer.add_scalar(f"{group}/{name}/seed_{seed}", float(v), step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def progress_bar(total: int, initial: int, enabled: bool | None, description: str):
    """A tqdm bar over gradient steps showing updates/s ("upd/s"). enabled=None: only when
    stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="upd", desc=description, dynamic_ncols=True,
                disable=(not enabled) if enabled is not None else None, smoothing=0.05,
                mininterval=0.5)
