"""Inverse dynamics labelling: predict the missing actions of action-free trajectories.

An inverse dynamics model (IDM) predicts a_t from the states around it,

    x_t = [s_{t-k}, …, s_{t-1}, s_t, s_{t+1}]      (k = `history`; slots before the
                                                    episode start are zero)

with states standardised by the dataset's mean and std. It is trained on the rows whose
action was recorded and then fills the rows that have none (SS-ORL, Zheng et al. 2023):

    config = IDMConfig.from_toml("baselines/idm/default.toml")
    labelled = label_actions(hidden, config, device="cuda")
    labelled.labelled                     # every row that could be labelled: True
    labelled.infos["action_is_proxy"]     # (N,) True where the action is a prediction
    labelled.metadata["labelling"]        # the IDM config, held-out error, counts

Heads: "tanh_gaussian" (SS-ORL: mean and log-std heads, log-std squashed into
[log_std_min, log_std_max], trained by the negative log-likelihood of the atanh of the
normalised action; the label is tanh(mean)) or "deterministic" (tanh output trained by MSE).
Actions are mapped to [-1, 1] with the per-dimension min and max of the recorded actions.
An ensemble (`ensemble_size` > 1) trains its members side by side as one batched network (a
leading member dimension, each member with its own init, batches and dropout) and labels with
the members' mean. Training holds out `holdout_fraction` of the labelled trajectories, measures
the label error on them every `eval_every` steps, keeps the best parameters and stops after
`patience` evaluations without improvement.

Rows whose next state is unknown (the last row of an episode in a file without
`next_observations`) can neither train the IDM nor be labelled; they stay unlabelled.
Proxy rows are `labelled` (training samples them, like recorded ones); `action_is_proxy` tells
them apart and travels with the dataset through HDF5 and Minari (an `infos` key).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from offrl.data.dataset import PROXY_INFO, Dataset, DatasetError
from offrl.errors import UserError

__all__ = ["IDMConfig", "IDMConfigError", "InverseDynamicsModel", "fit_idm", "label_actions",
           "HEADS"]

HEADS = ("tanh_gaussian", "deterministic")
_ACTION_EPS = 1e-5  # normalised targets are clipped to ±(1 − eps) so atanh stays finite


class IDMConfigError(UserError, ValueError):
    """An IDM config file or value is malformed. The message names the file and the key."""


# ---------------------------------------------------------------------------------- config
@dataclass
class IDMConfig:
    """How the inverse dynamics model is built and trained. Defaults follow SS-ORL."""

    history: int = 1
    """k: past states s_{t-k..t-1} fed with s_t and s_{t+1} (zero before the episode start)."""
    hidden_dims: list[int] = field(default_factory=lambda: [1024, 1024])
    """Widths of the hidden layers (ReLU)."""
    dropout: float = 0.1
    """Dropout after every hidden layer, during training only."""
    head: str = "tanh_gaussian"
    """"tanh_gaussian" (NLL, label = tanh(mean)) or "deterministic" (tanh output, MSE)."""
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    ensemble_size: int = 1
    """Members trained side by side; the label is their mean."""
    learning_rate: float = 1e-4
    """Adam's step size."""
    batch_size: int = 1024
    """Rows per member per gradient step."""
    max_steps: int = 100_000
    """Gradient steps at most (fewer when early stopping ends training)."""
    eval_every: int = 1000
    """Gradient steps between held-out evaluations."""
    patience: int = 10
    """Stop after this many evaluations without a better held-out error; 0: never stop early."""
    holdout_fraction: float = 0.1
    """Fraction of the labelled trajectories held out for early stopping; 0: none (train
    max_steps, no held-out error)."""
    seed: int = 0
    """Seeds the held-out draw, the init, the batches and dropout."""
    predict_batch_size: int = 65536
    """Rows per forward pass when evaluating and labelling."""
    state_std_eps: float = 1e-3
    """Added to the per-dimension state std (constant dimensions stay finite)."""

    def validate(self, source: str = "<IDM config>") -> "IDMConfig":
        def fail(key: str, problem: str) -> IDMConfigError:
            return IDMConfigError(f"{source}: [idm] {key} {problem}")

        for key in ("ensemble_size", "batch_size", "max_steps", "eval_every",
                    "predict_batch_size"):
            if getattr(self, key) <= 0:
                raise fail(key, f"must be positive; got {getattr(self, key)}")
        for key in ("history", "patience", "seed"):
            if getattr(self, key) < 0:
                raise fail(key, f"must be 0 or positive; got {getattr(self, key)}")
        if not self.hidden_dims or any(d <= 0 for d in self.hidden_dims):
            raise fail("hidden_dims", f"must be a non-empty list of positive widths; got "
                       f"{self.hidden_dims}")
        if self.head not in HEADS:
            raise fail("head", f"is {self.head!r}; expected one of {', '.join(map(repr, HEADS))}")
        if not 0 <= self.dropout < 1:
            raise fail("dropout", f"must be in [0, 1); got {self.dropout}")
        if not 0 <= self.holdout_fraction < 1:
            raise fail("holdout_fraction", f"must be in [0, 1); got {self.holdout_fraction}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise fail("learning_rate", f"must be positive; got {self.learning_rate}")
        if not self.log_std_min < self.log_std_max:
            raise fail("log_std_min", f"({self.log_std_min}) must be below log_std_max "
                       f"({self.log_std_max})")
        if not self.state_std_eps >= 0:
            raise fail("state_std_eps", f"must be 0 or positive; got {self.state_std_eps}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<IDM config>") -> "IDMConfig":
        """Strict: an unknown key or a value of the wrong type raises IDMConfigError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        defaults = cls()
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in fields:
                raise IDMConfigError(f"{source}: [idm] {key} is not an IDM setting (known: "
                                     f"{', '.join(fields)})")
            kwargs[key] = _typed(value, getattr(defaults, key), f"{source}: [idm] {key}")
        return cls(**kwargs).validate(source)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "IDMConfig":
        """Read the `[idm]` table of a TOML file (e.g. baselines/idm/default.toml)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise IDMConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise IDMConfigError(f"{path}: not valid TOML: {exc}") from exc
        extra = sorted(set(data) - {"idm"})
        if extra:
            raise IDMConfigError(f"{path}: unexpected top-level key(s) {extra}; an IDM config "
                                 "holds one [idm] table")
        if not isinstance(data.get("idm", {}), dict):
            raise IDMConfigError(f"{path}: 'idm' must be a table ([idm])")
        return cls.from_dict(data.get("idm", {}), source=str(path))


def _typed(value: Any, default: Any, where: str) -> Any:
    """`value` checked against the type of the field's default (ints are accepted as floats)."""
    def bad(expected: str) -> IDMConfigError:
        return IDMConfigError(f"{where} has {type(value).__name__} value {value!r}; "
                              f"expected {expected}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("a list of integers")
        return list(value)
    return value


# ---------------------------------------------------------------------------------- features
class _StateWindows:
    """Standardised states of a dataset on the device, and the IDM input of any rows.

    obs, next_obs: (N, d) float32 standardised; next_obs rows with `has_next` False are zero.
    start: (N,) int64 first row of each row's episode (history slots before it are zero).
    """

    def __init__(self, dataset: Dataset, mean: np.ndarray, std: np.ndarray, history: int,
                 device: torch.device):
        obs = dataset.observations
        n = len(dataset)
        starts, ends = dataset.episode_starts, dataset.episode_ends
        start_of_row = np.repeat(starts, ends - starts)
        if dataset.next_observations is not None:
            next_obs, has_next = dataset.next_observations, np.ones(n, dtype=bool)
        else:  # the following row, inside the episode only
            has_next = np.ones(n, dtype=bool)
            has_next[ends - 1] = False
            next_obs = np.zeros_like(obs)
            next_obs[:-1] = obs[1:]
            next_obs[~has_next] = 0
        f32 = np.float32
        self.has_next = has_next
        self.history = history
        self.device = device
        self.obs = torch.from_numpy(((obs - mean) / std).astype(f32)).to(device)
        nxt = ((next_obs - mean) / std).astype(f32)
        nxt[~has_next] = 0
        self.next_obs = torch.from_numpy(nxt).to(device)
        self.start = torch.from_numpy(start_of_row.astype(np.int64)).to(device)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (...,) int64 -> inputs (..., (history + 2) * d)."""
        parts = []
        for j in range(self.history, 0, -1):
            past = rows - j
            inside = (past >= self.start[rows]).unsqueeze(-1)
            parts.append(torch.where(inside, self.obs[past.clamp(min=0)], 0.0))
        parts += [self.obs[rows], self.next_obs[rows]]
        return torch.cat(parts, dim=-1)


# ---------------------------------------------------------------------------------- network
class _EnsembleMLP(nn.Module):
    """M independent MLPs as one: weights (M, in, out), inputs (M, B, in) -> (M, B, out).

    Dropout masks come from the caller's generator so training is reproducible from the seed.
    """

    def __init__(self, members: int, sizes: list[int], dropout: float,
                 generator: torch.Generator, device: torch.device):
        super().__init__()
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        self.dropout = dropout
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default init, per member
            w = torch.rand(members, fan_in, fan_out, generator=generator, device=device)
            b = torch.rand(members, 1, fan_out, generator=generator, device=device)
            self.weights.append(nn.Parameter((w * 2 - 1) * bound))
            self.biases.append(nn.Parameter((b * 2 - 1) * bound))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
                if generator is not None and self.dropout > 0:
                    keep = torch.rand(x.shape, generator=generator, device=x.device)
                    x = x * (keep >= self.dropout) / (1 - self.dropout)
        return x


# ---------------------------------------------------------------------------------- model
class InverseDynamicsModel:
    """A trained IDM: standardisation, action range and the ensemble network.

    `predict(dataset, rows)` labels rows of any dataset with the same observation width.
    `report` holds what `fit_idm` measured (held-out error, steps), empty if not fitted.
    """

    def __init__(self, config: IDMConfig, obs_dim: int, action_dim: int,
                 state_mean: np.ndarray, state_std: np.ndarray, action_low: np.ndarray,
                 action_high: np.ndarray, device: str | torch.device = "cpu"):
        self.config = config
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.state_mean = np.asarray(state_mean, np.float64)
        self.state_std = np.asarray(state_std, np.float64)
        self.action_low = np.asarray(action_low, np.float64)
        self.action_high = np.asarray(action_high, np.float64)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        in_dim = (config.history + 2) * self.obs_dim
        out_dim = action_dim * (2 if config.head == "tanh_gaussian" else 1)
        self.net = _EnsembleMLP(config.ensemble_size, [in_dim, *config.hidden_dims, out_dim],
                                config.dropout, self.generator, self.device)
        center = (self.action_high + self.action_low) / 2
        half = np.maximum((self.action_high - self.action_low) / 2, 1e-6)
        self._center = torch.tensor(center, dtype=torch.float32, device=self.device)
        self._half = torch.tensor(half, dtype=torch.float32, device=self.device)
        self.report: dict[str, Any] = {}

    # ------------------------------------------------------------------ pieces
    def windows(self, dataset: Dataset) -> _StateWindows:
        if dataset.observation_dim != self.obs_dim:
            raise DatasetError(f"{dataset.name}: observations have {dataset.observation_dim} "
                               f"columns; the inverse dynamics model was trained on "
                               f"{self.obs_dim}")
        return _StateWindows(dataset, self.state_mean, self.state_std, self.config.history,
                             self.device)

    def normalise_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Env units -> [-1 + eps, 1 - eps]."""
        return ((actions - self._center) / self._half).clamp(-1 + _ACTION_EPS, 1 - _ACTION_EPS)

    def heads(self, x: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (M, B, in) -> pre-tanh mean (M, B, A) and log-std (M, B, A) or None."""
        out = self.net(x, generator)
        if self.config.head == "deterministic":
            return out, None
        mean, raw = out.chunk(2, dim=-1)
        lo, hi = self.config.log_std_min, self.config.log_std_max
        return mean, lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1)  # smooth squash into [lo, hi]

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean training loss of every member; x (M, B, in), target (M, B, A) normalised.

        tanh_gaussian: Gaussian NLL of atanh(target) (the tanh Jacobian does not depend on the
        parameters, so it is left out); deterministic: MSE of tanh(output).
        """
        mean, log_std = self.heads(x, self.generator)
        if log_std is None:
            return (torch.tanh(mean) - target).pow(2).sum(-1).mean()
        u = torch.atanh(target)
        z = (u - mean) * torch.exp(-log_std)
        return (0.5 * z.pow(2) + log_std + 0.5 * math.log(2 * math.pi)).sum(-1).mean()

    @torch.no_grad()
    def predict_windows(self, windows: _StateWindows, rows: np.ndarray,
                        members: bool = False) -> np.ndarray:
        """Labels (R, A) in env units (members: (M, R, A)), in batches of predict_batch_size."""
        m = self.config.ensemble_size
        out = []
        for chunk in np.array_split(rows, max(1, math.ceil(len(rows) /
                                                           self.config.predict_batch_size))):
            idx = torch.from_numpy(chunk.astype(np.int64)).to(self.device)
            x = windows(idx).unsqueeze(0).expand(m, -1, -1)
            mean, _ = self.heads(x)
            a = torch.tanh(mean) * self._half + self._center
            out.append(a if members else a.mean(0))
        if not out:
            shape = (m, 0, self.action_dim) if members else (0, self.action_dim)
            return np.zeros(shape, np.float32)
        return torch.cat(out, dim=1 if members else 0).float().cpu().numpy()

    def predict(self, dataset: Dataset, rows: np.ndarray | None = None) -> np.ndarray:
        """(R, A) float32 predicted actions (env units) for `rows` (default: every row).

        Rows without a known next state get NaN.
        """
        windows = self.windows(dataset)
        rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.full((len(rows), self.action_dim), np.nan, dtype=np.float32)
        ok = windows.has_next[rows]
        out[ok] = self.predict_windows(windows, rows[ok])
        return out


# ---------------------------------------------------------------------------------- training
def _split_holdout(dataset: Dataset, rows: np.ndarray, fraction: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(train rows, held-out rows, train episodes, held-out episodes): whole trajectories."""
    episode_of_row = np.searchsorted(dataset.episode_starts, rows, side="right") - 1
    episodes = np.unique(episode_of_row)
    if fraction == 0:
        return rows, rows[:0], len(episodes), 0
    n_hold = max(1, int(np.floor(fraction * len(episodes) + 0.5)))
    if n_hold >= len(episodes):
        raise DatasetError(f"{dataset.name}: has {len(episodes)} labelled trajectory(ies); "
                           f"holding out {n_hold} for early stopping leaves none to train on; "
                           "set holdout_fraction = 0 or keep more trajectories labelled")
    held = rng.choice(episodes, size=n_hold, replace=False)
    is_held = np.isin(episode_of_row, held)
    return rows[~is_held], rows[is_held], len(episodes) - n_hold, n_hold


def fit_idm(dataset: Dataset, config: IDMConfig, *, device: str | torch.device = "cpu",
            progress: bool = False,
            log: Callable[[str], None] | None = None) -> InverseDynamicsModel:
    """Train an IDM on the rows of `dataset` whose action was recorded (not proxies).

    Held-out trajectories (config.holdout_fraction) drive early stopping; the best
    parameters are kept. The returned model's `report` holds heldout_mse (mean over rows and
    action dims, env units), heldout_mse_per_dim, action_variance (of the held-out true
    actions, mean over dims), heldout_r2 = 1 − mse / variance, heldout_nll (tanh_gaussian),
    steps, best_step, stopped_early, train/heldout trajectory and transition counts, seconds.
    Raises DatasetError when there is nothing to learn from.
    """
    config.validate()
    dataset.validate()
    where = dataset.name
    device = torch.device(device)
    if dataset.action_dim == 0:
        raise DatasetError(f"{where}: has no action columns, so no inverse dynamics model can be "
                           "trained on it; train one on a labelled dataset and pass model=")
    windows_mask = np.ones(len(dataset), dtype=bool)
    if dataset.next_observations is None:
        windows_mask[dataset.episode_ends - 1] = False
    rows = np.flatnonzero(dataset.true_labelled & windows_mask)
    if len(rows) == 0:
        raise DatasetError(f"{where}: no labelled trajectory left to train the inverse dynamics "
                           "model on (no row with a recorded action and a known next state)")

    rng = np.random.default_rng(config.seed)
    train_rows, held_rows, n_train_eps, n_held_eps = _split_holdout(
        dataset, rows, config.holdout_fraction, rng)
    obs = dataset.observations
    mean = obs.mean(axis=0, dtype=np.float64)  # every state is observed, labelled or not
    std = obs.std(axis=0, dtype=np.float64) + config.state_std_eps
    true_actions = dataset.actions[rows].astype(np.float64)
    model = InverseDynamicsModel(config, dataset.observation_dim, dataset.action_dim, mean, std,
                                 true_actions.min(axis=0), true_actions.max(axis=0), device)
    windows = model.windows(dataset)
    actions = torch.from_numpy(dataset.actions.astype(np.float32)).to(device)
    train_idx = torch.from_numpy(train_rows).to(device)
    optimiser = torch.optim.Adam(model.net.parameters(), lr=config.learning_rate)

    held_true = dataset.actions[held_rows].astype(np.float64)
    variance = held_true.var(axis=0) if len(held_rows) else np.full(dataset.action_dim, np.nan)
    best = {"mse": math.inf, "step": 0, "state": None}
    history: list[tuple[int, float]] = []
    since_best, step, started = 0, 0, time.perf_counter()
    m, b = config.ensemble_size, config.batch_size

    def evaluate() -> float:
        model.net.eval()
        pred = model.predict_windows(windows, held_rows).astype(np.float64)
        model.net.train()
        return float(((pred - held_true) ** 2).mean())

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.max_steps, desc="IDM", unit="step")
    model.net.train()
    stopped_early = False
    while step < config.max_steps:
        # Each member draws its own batch (independent errors make the ensemble mean better).
        pick = torch.randint(len(train_rows), (m, b), generator=model.generator, device=device)
        idx = train_idx[pick]
        loss = model.loss(windows(idx), model.normalise_actions(actions[idx]))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if bar is not None:
            bar.update(1)
        if len(held_rows) and (step % config.eval_every == 0 or step == config.max_steps):
            mse = evaluate()
            history.append((step, mse))
            if mse < best["mse"]:
                state = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
                best.update(mse=mse, step=step, state=state)
                since_best = 0
            else:
                since_best += 1
            if log is not None:
                log(f"IDM step {step}: held-out action MSE {mse:.5g} (best {best['mse']:.5g} at "
                    f"step {best['step']}; action variance {variance.mean():.5g})")
            if config.patience and since_best >= config.patience:
                stopped_early = True
                break
    if bar is not None:
        bar.close()
    if best["state"] is not None:
        model.net.load_state_dict(best["state"])
    model.net.eval()

    report: dict[str, Any] = {
        "train_trajectories": n_train_eps, "train_transitions": len(train_rows),
        "heldout_trajectories": n_held_eps, "heldout_transitions": len(held_rows),
        "steps": step, "best_step": best["step"] if len(held_rows) else step,
        "stopped_early": stopped_early, "seconds": round(time.perf_counter() - started, 3),
        "device": str(device),
    }
    if len(held_rows):
        pred = model.predict_windows(windows, held_rows).astype(np.float64)
        per_dim = ((pred - held_true) ** 2).mean(axis=0)
        report.update(heldout_mse=float(per_dim.mean()), heldout_mse_per_dim=per_dim.tolist(),
                      action_variance=float(variance.mean()),
                      action_variance_per_dim=variance.tolist(),
                      heldout_r2=float(1 - per_dim.mean() / max(variance.mean(), 1e-12)),
                      heldout_curve=[[s, round(v, 8)] for s, v in history])
        if config.head == "tanh_gaussian":
            report["heldout_nll"] = _heldout_nll(model, windows, held_rows, actions)
    else:
        report.update(heldout_mse=None, action_variance=None, heldout_r2=None,
                      note="holdout_fraction = 0: no held-out error was measured")
    model.report = report
    return model


@torch.no_grad()
def _heldout_nll(model: InverseDynamicsModel, windows: _StateWindows, rows: np.ndarray,
                 actions: torch.Tensor) -> float:
    """Per-row NLL of the normalised held-out actions under each member's tanh-Gaussian
    (tanh Jacobian included), averaged over rows and members."""
    total, m = 0.0, model.config.ensemble_size
    for chunk in np.array_split(rows, max(1, math.ceil(len(rows) /
                                                       model.config.predict_batch_size))):
        idx = torch.from_numpy(chunk).to(model.device)
        mean, log_std = model.heads(windows(idx).unsqueeze(0).expand(m, -1, -1))
        target = model.normalise_actions(actions[idx]).unsqueeze(0)
        u = torch.atanh(target)
        logp = (-0.5 * ((u - mean) * torch.exp(-log_std)).pow(2) - log_std
                - 0.5 * math.log(2 * math.pi) - torch.log1p(-target.pow(2)))
        total += float(-logp.sum()) / m
    return total / max(len(rows), 1)


# ---------------------------------------------------------------------------------- labelling
def label_actions(dataset: Dataset, config: IDMConfig | None = None, *,
                  model: InverseDynamicsModel | None = None,
                  device: str | torch.device = "cpu", progress: bool = False,
                  log: Callable[[str], None] | None = None) -> Dataset:
    """Fill the rows of `dataset` that have no action with inverse-dynamics predictions.

    config: trains a new IDM on the dataset's recorded actions (`fit_idm`), or
    model: an IDM trained elsewhere (e.g. to label a fully action-free dataset).
    Returns a new Dataset: predicted rows get the label (cast to the actions' dtype),
    labelled True and infos["action_is_proxy"] True; recorded actions are untouched;
    metadata["labelling"] records the IDM config, its held-out error and the counts, and
    dataset_id gains the suffix "-idm". Rows with no known next state stay unlabelled.
    """
    if (config is None) == (model is None):
        raise UserError("label_actions needs exactly one of config= (train an IDM here) and "
                        "model= (an IDM trained elsewhere)")
    dataset.validate()
    where = dataset.name
    todo = np.flatnonzero(~dataset.labelled)
    if len(todo) == 0:
        raise DatasetError(f"{where}: every row already has an action; nothing to label")
    if model is None:
        model = fit_idm(dataset, config, device=device, progress=progress, log=log)
    if dataset.action_dim not in (0, model.action_dim):
        raise DatasetError(f"{where}: actions have {dataset.action_dim} columns; the inverse "
                           f"dynamics model predicts {model.action_dim}")

    predicted = model.predict(dataset, todo)  # checks the observation width
    ok = ~np.isnan(predicted).any(axis=1)
    rows = todo[ok]
    if dataset.action_dim == 0:
        actions = np.full((len(dataset), model.action_dim), np.nan, dtype=np.float32)
    else:
        actions = dataset.actions.copy()
    actions[rows] = predicted[ok].astype(actions.dtype)
    labelled = dataset.labelled.copy()
    labelled[rows] = True
    proxy = dataset.action_is_proxy.copy()
    proxy[rows] = True

    meta = {k: v for k, v in dataset.metadata.items() if k not in ("sha256", "source_path")}
    source_id = dataset.metadata.get("dataset_id") or dataset.name
    meta["dataset_id"] = f"{source_id}-idm"
    meta["labelling"] = {
        "method": "inverse-dynamics", "source_dataset_id": source_id,
        "source_sha256": dataset.metadata.get("sha256"),
        "idm_config": model.config.to_dict(),
        "proxy_transitions": int(len(rows)),
        "unlabellable_transitions": int((~ok).sum()),
        "recorded_transitions": int(dataset.true_labelled.sum()),
        **model.report,
    }
    infos = {**dataset.infos, PROXY_INFO: proxy}
    return dataset.replace(actions=actions, labelled=labelled, infos=infos,
                           metadata=meta).validate()
