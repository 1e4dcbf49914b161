"""Offline-to-online fine-tuning: continue a complete offline run directory with online data.

    agent  <- RUN/checkpoints/latest.pt (the same agent, its optimisers and RNG streams)
    data   <- the run's dataset, normalised with RUN/normalization.json (as offline training)
    for env step k = 1..online_steps (every member in its own env, `EnvSlots`):
        a = agent.act(normalise(obs), deterministic=False)     exploration: the agent's own
        replay buffer <- (normalised s, a, scaled r, normalised s', terminal)
        utd times: agent.update(batch)    batch: mixing_ratio · B rows from the offline data,
                   the rest from the online buffer (mixing_ratio unset: uniform over both, i.e.
                   a replay buffer seeded with the offline data, as the IQL paper fine-tunes)
        every eval_every env steps and at the end: evaluation as offline (same episodes, env
                   seeds from the same stream 0, indexed by the global gradient step)

Everything is written to RUN/finetune-<tag>/:

    finetune.json    source run, algo, seeds, status, versions, command
    config.toml      [algo] (the agent's config online) and [finetune] (FinetuneConfig)
    metrics.csv      step (online env steps), gradient_step, seed, the agent's metrics, env_steps_per_s
    episodes.csv     step, seed, return, length, normalized_score, success: every training episode
    evaluations.csv  step, gradient_step, seed, episode, env_seed, return, length, normalized_score;
                     step 0 holds the offline run's last evaluation (the score before fine-tuning)
    checkpoints/latest.pt   exact resume: agent, replay buffer (contents and position), envs
                     (physics, RNG, time-limit counters), sampler generators, bookkeeping
    summary.json     per seed: offline score, final score, area under the normalised-score curve
                     (its mean over the online phase), cumulative regret (sparse tasks), steps

Stopped (Ctrl-C, `stop_after`) and started again with the same arguments, a fine-tuning run
continues from its checkpoint and gives the same numbers bit for bit (CPU, same thread count).

Metrics follow CORL's fine-tuning reports: the score at the end of offline training, during and
after online training; for sparse-reward tasks the cumulative regret, the mean over the online
phase's training episodes of 1 − success (an episode succeeds when some reward is > 0, CORL's
`is_goal_reached`); for dense ones the area under the normalised-score curve (trapezoids over
the evaluation points, divided by the online steps: the mean score over the phase).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from offrl.algos.base import Agent, Batch, member_generators
from offrl.data.dataset import Dataset, Transitions
from offrl.errors import UserError
from offrl.evaluation.rollout import VectorEvaluator, episode_seeds
from offrl.training.checkpoint import (global_rng_state, load_checkpoint, save_checkpoint,
                                       set_global_rng_state)
from offrl.training.config import (ConfigError, RunConfig, build_config, dataclass_from_dict,
                                   dump_toml, read_config_file, to_plain)
from offrl.training.logging import CsvLog, MetricAccumulator, progress_bar, read_csv_rows
from offrl.training.loop import (TRAINING_EVAL_STREAM, AgentPolicy, Normalization, _StopFlag,
                                 build_agent, env_facts, prepare_transitions)
from offrl.training.online import EnvSlots, ReplayBuffer
from offrl.training.run_dir import (STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED,
                                    STATUS_RUNNING, RunDirectory, git_commit, utc_now,
                                    write_json_atomic, write_text_atomic)

__all__ = ["FinetuneConfig", "FinetuneResult", "MixedSampler", "OfflineTable", "finetune",
           "finetune_dir", "read_finetune_file", "summarize"]

EVAL_COLUMNS = ["step", "gradient_step", "seed", "episode", "env_seed", "return", "length",
                "normalized_score"]
EPISODE_COLUMNS = ["step", "seed", "return", "length", "normalized_score", "success"]
FINETUNE_SECTIONS = ("algo", "finetune")
# algorithms whose runs may be fine-tuned as another: Cal-QL online from a CQL-pretrained agent
COMPATIBLE = {("cql", "cal_ql")}


@dataclass
class FinetuneConfig:
    """The online phase. Steps count env steps per member; 0 means "the offline run's value"."""

    online_steps: int = 1_000_000
    """Env steps per member (CORL: online_iterations)."""
    utd: int = 1
    """Gradient updates per env step (update-to-data ratio)."""
    mixing_ratio: float | None = None
    """Fraction of every batch drawn from the offline data (Cal-QL: 0.5); the rest comes from the
    online replay buffer. Unset: uniform over offline ∪ online rows (a buffer seeded with the
    offline data; the IQL paper's fine-tuning)."""
    batch_size: int = 0
    """Rows per member per update; 0: the offline run's batch_size."""
    buffer_size: int = 0
    """Online replay capacity per member; 0: online_steps (keep everything). Offline rows are
    never evicted."""
    eval_every: int = 0
    """Env steps between evaluations (always one at the end); 0: the offline run's eval_every."""
    eval_episodes: int = 0
    """Episodes per member per evaluation; 0: the offline run's."""
    log_every: int = 1000
    checkpoint_every: int = 50_000
    restart_lr_schedule: bool = False
    """IQL: restart the actor's cosine learning-rate decay over the online updates (the offline
    schedule has decayed it to 0 by the end of pre-training)."""
    sparse_reward: bool = False
    """The task is goal-reaching with sparse rewards: report cumulative regret (and use CORL's
    failed-episode return-to-go for Cal-QL)."""

    def __post_init__(self) -> None:
        for name in ("online_steps", "utd", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer; got {value!r}")
        for name in ("batch_size", "buffer_size", "eval_every", "eval_episodes"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"FinetuneConfig.{name} must be 0 or a positive integer; got {value!r}")
        if self.mixing_ratio is not None and not 0.0 <= self.mixing_ratio <= 1.0:
            raise ValueError(f"FinetuneConfig.mixing_ratio must be in [0, 1] or unset; got "
                             f"{self.mixing_ratio!r}")


@dataclass
class FinetuneResult:
    path: Path
    step: int
    status: str
    summary: dict[str, Any] | None = None


def finetune_dir(run_dir: str | Path, tag: str) -> Path:
    return Path(run_dir) / f"finetune-{tag}"


def read_finetune_file(path: str | Path, algo_config_class: type, base_algo: Any = None
                       ) -> tuple[dict[str, Any], FinetuneConfig]:
    """A fine-tuning config file: [algo] (changes to the agent's config for the online phase,
    checked against `algo_config_class`) and [finetune] (`FinetuneConfig`). Returns the [algo]
    values (a dict, applied later over the run's config) and the FinetuneConfig."""
    import tomllib

    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"fine-tuning config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"fine-tuning config {path}: not valid TOML: {exc}") from exc
    for key, value in tables.items():
        if key not in FINETUNE_SECTIONS or not isinstance(value, dict):
            raise ConfigError(f"{path}: unknown top-level key {key!r}; a fine-tuning config has "
                              "only the tables [algo] and [finetune]")
    algo = dict(tables.get("algo", {}))
    if base_algo is not None:  # check the keys and types now, against the class
        dataclass_from_dict(algo_config_class, algo, source=str(path), table="algo", base=base_algo)
    fc = dataclass_from_dict(FinetuneConfig, tables.get("finetune", {}), source=str(path),
                             table="finetune")
    return algo, fc


# ---------------------------------------------------------------------------------- sampling
class OfflineTable:
    """The offline transitions (labelled rows) as one float32 table on the device, columns
    [obs | act | reward | next obs | done | return-to-go]; `gather(index (S, n))` -> (S, n, W)."""

    def __init__(self, transitions: Transitions, returns: np.ndarray | None,
                 device: str | torch.device):
        keep = np.asarray(transitions.labelled, dtype=bool)
        if not keep.any():
            raise UserError("the offline data has no labelled transitions to fine-tune with")

        def col(a: np.ndarray) -> np.ndarray:
            a = np.asarray(a, dtype=np.float32)[keep]
            return a.reshape(len(a), -1)

        mc = np.zeros(len(keep), np.float32) if returns is None else returns
        parts = [col(transitions.observations), col(transitions.actions), col(transitions.rewards),
                 col(transitions.next_observations), col(transitions.dones), col(mc)]
        self.observation_dim, self.action_dim = parts[0].shape[1], parts[1].shape[1]
        self.table = torch.from_numpy(np.concatenate(parts, axis=1)).to(device)
        self.size = int(self.table.shape[0])
        self.reward_min = float(parts[2].min())

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        s, n = index.shape
        return self.table.index_select(0, index.reshape(-1)).view(s, n, -1)


def _batch(rows: torch.Tensor, obs_dim: int, act_dim: int, with_returns: bool) -> Batch:
    o, a = obs_dim, act_dim
    fields = dict(observations=rows[..., :o], actions=rows[..., o:o + a], rewards=rows[..., o + a],
                  next_observations=rows[..., o + a + 1:2 * o + a + 1], dones=rows[..., 2 * o + a + 1])
    if with_returns:
        from offrl.algos.cal_ql import MCBatch

        return MCBatch(**fields, mc_returns=rows[..., 2 * o + a + 2])
    return Batch(**fields)


class MixedSampler:
    """Batches (S, B, ·) from the offline table and the online replay buffer.

    mixing_ratio r: round(r B) rows uniform over the offline data, the rest uniform over the
    online buffer (CORL's Cal-QL). None: B rows uniform over offline ∪ online. Member s draws
    from its own generator (`derive_seed(seed, "finetune-sampler")`).
    """

    def __init__(self, offline: OfflineTable, buffer: ReplayBuffer, seeds: list[int],
                 batch_size: int, mixing_ratio: float | None, device: str | torch.device,
                 with_returns: bool = False):
        self.offline, self.buffer = offline, buffer
        self.batch_size, self.mixing_ratio = int(batch_size), mixing_ratio
        self.with_returns = with_returns
        self.device = torch.device(device)
        self.generators = member_generators(seeds, "finetune-sampler", self.device)
        self.n_offline = None if mixing_ratio is None else int(round(batch_size * mixing_ratio))

    def _online_rows(self, index: torch.Tensor) -> torch.Tensor:
        d = self.buffer.data
        members = torch.arange(index.shape[0], device=self.device).unsqueeze(1)
        mc = d["mc_returns"][members, index] if "mc_returns" in d else torch.zeros_like(index, dtype=torch.float32)
        return torch.cat([d["observations"][members, index], d["actions"][members, index],
                          d["rewards"][members, index].unsqueeze(-1),
                          d["next_observations"][members, index],
                          d["terminals"][members, index].unsqueeze(-1), mc.unsqueeze(-1)], dim=-1)

    def _draw(self, high: int, n: int) -> torch.Tensor:
        index = torch.empty(len(self.generators), n, dtype=torch.long, device=self.device)
        for s, g in enumerate(self.generators):
            index[s] = torch.randint(high, (n,), generator=g, device=self.device)
        return index

    def sample(self) -> Batch:
        n_off_rows, size = self.offline.size, self.buffer.size
        B = self.batch_size
        if self.n_offline is None:  # one buffer: offline rows first, then the online ones
            index = self._draw(n_off_rows + size, B)
            off = self.offline.gather(index.clamp(max=n_off_rows - 1))
            if size == 0:
                rows = off
            else:
                on = self._online_rows((index - n_off_rows).clamp(min=0))
                rows = torch.where((index < n_off_rows).unsqueeze(-1), off, on)
        else:
            n_on = B - self.n_offline
            if n_on and size == 0:
                raise ValueError("the online buffer is empty; add a transition before sampling")
            parts = []
            if self.n_offline:
                parts.append(self.offline.gather(self._draw(n_off_rows, self.n_offline)))
            if n_on:
                parts.append(self._online_rows(self._draw(size, n_on)))
            rows = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return _batch(rows, self.offline.observation_dim, self.offline.action_dim, self.with_returns)

    def state_dict(self) -> dict[str, Any]:
        return {"generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, st in zip(self.generators, state["generators"]):
            g.set_state(st.cpu())


# ---------------------------------------------------------------------------------- helpers
def _online_returns_to_go(rewards: np.ndarray, terminals: np.ndarray, gamma: float,
                          failure_reward: float | None) -> np.ndarray:
    """Return-to-go of one finished episode's rows (oldest first)."""
    out = np.empty(len(rewards), dtype=np.float64)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = float(rewards[t]) + gamma * (0.0 if terminals[t] > 0.5 else g)
        out[t] = g
    if failure_reward is not None and gamma < 1 and np.all(rewards == failure_reward):
        out[:] = failure_reward / (1.0 - gamma)
    return out.astype(np.float32)


def _restart_actor_lr(agent: Agent, updates: int) -> None:
    """Restart IQL's actor cosine decay at its base lr, over `updates` updates."""
    from torch.optim.lr_scheduler import CosineAnnealingLR

    schedule = getattr(agent, "actor_lr_schedule", None)
    if schedule is None:
        raise UserError(f"[finetune] restart_lr_schedule = true applies to IQL (an actor lr "
                        f"schedule); {agent.name} has none")
    for group in agent.actor_optimizer.param_groups:
        group["lr"] = group["initial_lr"] = agent.config.actor_lr
    agent.actor_lr_schedule = CosineAnnealingLR(agent.actor_optimizer, max(1, updates))


def _mean_by(rows: list[dict[str, str]], key: str, value: str) -> dict[int, dict[int, float]]:
    out: dict[int, dict[int, list[float]]] = {}
    for r in rows:
        if r.get(value, "") == "":
            continue
        out.setdefault(int(r["seed"]), {}).setdefault(int(r[key]), []).append(float(r[value]))
    return {s: {k: float(np.mean(v)) for k, v in sorted(d.items())} for s, d in out.items()}


def summarize(path: str | Path) -> dict[str, Any]:
    """The fine-tuning metrics of RUN/finetune-<tag>/, recomputed from its CSV files.

    Per seed: offline_score (step 0: the offline run's last evaluation), final_score (the last
    evaluation), curve {env step: mean score}, auc (trapezoidal area under the curve over
    [0, last step] divided by the last step: the mean score over the online phase), regret (mean
    of 1 − success over the online training episodes; CORL's cumulative regret, meaningful for
    sparse tasks), episodes, online_env_steps. Scores are normalised scores where the run has
    reference scores, else returns (`score` says which).
    """
    path = Path(path)
    info = json.loads((path / "finetune.json").read_text())
    evals = read_csv_rows(path / "evaluations.csv")
    episodes = read_csv_rows(path / "episodes.csv") if (path / "episodes.csv").is_file() else []
    normalized = bool(evals) and all(r["normalized_score"] != "" for r in evals)
    column = "normalized_score" if normalized else "return"
    curves = _mean_by(evals, "step", column)
    done_steps = max((int(r["step"]) for r in evals), default=0)
    seeds = {}
    for seed, curve in curves.items():
        steps = np.array(sorted(curve), dtype=np.float64)
        values = np.array([curve[int(t)] for t in steps])
        auc = float(np.trapezoid(values, steps) / steps[-1]) if len(steps) > 1 and steps[-1] > 0 else float(values[-1])
        ep = [float(r["success"]) for r in episodes if int(r["seed"]) == seed]
        seeds[str(seed)] = {
            "offline_score": curve.get(0, math.nan), "final_score": float(values[-1]),
            "auc": auc, "regret": float(1.0 - np.mean(ep)) if ep else math.nan,
            "episodes": len(ep), "online_env_steps": int(steps[-1]),
            "curve": {str(int(t)): float(v) for t, v in zip(steps, values)}}
    agg = {k: float(np.mean([v[k] for v in seeds.values()])) if seeds else math.nan
           for k in ("offline_score", "final_score", "auc", "regret")}
    return {"algo": info["algo"], "source_algo": info.get("source_algo"),
            "dataset_id": info.get("dataset_id"), "env_id": info.get("env_id"),
            "tag": info.get("tag"), "status": info.get("status"), "score": column,
            "online_steps": info.get("online_steps"), "online_env_steps_done": done_steps,
            "sparse_reward": info.get("sparse_reward", False), "seeds": seeds,
            "mean_over_seeds": agg}


# ---------------------------------------------------------------------------------- the loop
def finetune(run_dir: str | Path, dataset: Dataset, config: FinetuneConfig | None = None, *,
             algo: str | None = None, algo_overrides: dict[str, Any] | None = None,
             tag: str | None = None, device: str | torch.device = "cpu",
             progress: bool | None = None, stop_after: int | None = None, command: Any = None,
             print_fn: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune the complete offline run `run_dir` online, in `run_dir/finetune-<tag>/`.

    dataset: the run's dataset (its sha256 must match run.json's; its statistics must reproduce
        normalization.json). algo: the agent to continue as; default the run's own (a CQL run
        may be continued as "cal_ql"). algo_overrides: changes to the agent's config for the
        online phase (loss weights; not network shapes). tag: default the algo's name.
    stop_after: stop (checkpoint, status "interrupted") after this many env steps; calling
        again with the same arguments continues. An existing finetune folder with a different
        config is refused.
    """
    from offrl.algos import get_algorithm

    config = config or FinetuneConfig()
    device = torch.device(device)
    run = RunDirectory(run_dir).require()
    info = run.read_info()
    if info.get("status") != STATUS_COMPLETE:
        raise UserError(f"{run.path} is {info.get('status')!r}, not complete; finish the offline "
                        f"run first (`offrl train --resume {run.path}`)")
    source_algo = info["algo"]
    algo = algo or source_algo
    if algo != source_algo and (source_algo, algo) not in COMPATIBLE:
        raise UserError(f"{run.path} is a {source_algo} run; it can be fine-tuned as "
                        f"{source_algo}" + "".join(f" or {b}" for a, b in COMPATIBLE if a == source_algo))
    agent_cls = get_algorithm(algo)
    sha = dataset.metadata.get("sha256")
    if info.get("dataset_sha256") and sha and sha != info["dataset_sha256"]:
        raise UserError(f"{run.path} was trained on {info['dataset_id']} with sha256 "
                        f"{info['dataset_sha256']}; the dataset given has sha256 {sha}")

    # The agent's config: the run's, with the online phase's changes.
    tables = read_config_file(run.config_toml)
    run_config: RunConfig = build_config(algo, agent_cls.config_class, tables,
                                         source=str(run.config_toml))
    tc = run_config.training
    algo_config = agent_cls.adapt_config(run_config.algo, total_steps=tc.steps)
    if algo_overrides:
        shapes = [k for k in algo_overrides if k.endswith("hidden_dims")]
        if shapes:
            raise UserError(f"fine-tuning keeps the offline networks; cannot change {shapes}")
        algo_config = dataclass_from_dict(agent_cls.config_class, algo_overrides,
                                          source="fine-tuning overrides", table="algo",
                                          base=algo_config)
    seeds = list(tc.seeds)
    S = len(seeds)
    batch_size = config.batch_size or tc.batch_size
    eval_every = config.eval_every or tc.eval_every or config.online_steps
    eval_episodes = config.eval_episodes or tc.eval_episodes
    capacity = config.buffer_size or config.online_steps
    uses_returns = bool(getattr(agent_cls, "uses_mc_returns", False))

    # The offline data, exactly as offline training saw it.
    transitions, normalization = prepare_transitions(dataset, tc)
    stored = Normalization.from_json(run.read_normalization())
    if not (np.array_equal(stored.observation_mean, normalization.observation_mean)
            and np.array_equal(stored.observation_std, normalization.observation_std)):
        raise UserError(f"{run.path}: the dataset's observation statistics differ from "
                        "normalization.json; this is not the data the run was trained on")
    returns = None
    if uses_returns:
        from offrl.algos.cal_ql import mc_returns

        returns = mc_returns(transitions, algo_config.gamma, sparse_reward=config.sparse_reward)
    env_id = info.get("env_id")
    max_action, _ = env_facts(env_id, dataset.name)
    max_episode_steps = info.get("max_episode_steps")
    refs = (info.get("ref_min_score"), info.get("ref_max_score"))
    has_refs = None not in refs and refs[1] > refs[0]

    # The fine-tuning folder.
    tag = tag or algo
    out = finetune_dir(run.path, tag)
    config_text = dump_toml({"algo": to_plain(algo_config), "finetune": to_plain(config)})
    meta_file, ckpt_path = out / "finetune.json", out / "checkpoints" / "latest.pt"
    resuming = (out / "config.toml").is_file()
    if resuming:
        if (out / "config.toml").read_text() != config_text:
            raise UserError(f"{out} holds a fine-tuning run with a different config; use another "
                            "--tag (or the same arguments to resume it)")
        meta = json.loads(meta_file.read_text())
        if meta.get("status") == STATUS_COMPLETE:
            print_fn(f"{out} is already complete ({config.online_steps} env steps)")
            return FinetuneResult(out, config.online_steps, STATUS_COMPLETE, summarize(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
        commit, dirty = git_commit()
        from offrl import __version__

        meta = {"kind": "finetune", "algo": algo, "source_algo": source_algo,
                "source_run": str(run.path), "dataset_id": info.get("dataset_id"),
                "dataset_sha256": info.get("dataset_sha256"), "env_id": env_id, "tag": tag,
                "seeds": seeds, "offline_steps": tc.steps, "online_steps": config.online_steps,
                "sparse_reward": config.sparse_reward, "ref_min_score": refs[0],
                "ref_max_score": refs[1], "offrl_version": __version__, "git_commit": commit,
                "git_dirty": dirty, "torch_version": torch.__version__,
                "threads": torch.get_num_threads(), "device": str(device), "started": utc_now(),
                "finished": None, "status": STATUS_RUNNING, "command": command}
        write_text_atomic(out / "config.toml", config_text)
        write_json_atomic(meta_file, meta)

    print_fn(f"offrl finetune: {algo} from {run.path} ({source_algo}, {tc.steps} offline steps), "
             f"seeds {seeds}, {config.online_steps} env steps, utd {config.utd}, mixing "
             f"{'uniform' if config.mixing_ratio is None else config.mixing_ratio}, device {device}")
    print_fn(f"fine-tuning directory: {out}{' (resuming)' if resuming else ''}")

    # Agent, envs, buffers.
    obs_dim, act_dim = transitions.observations.shape[1], transitions.actions.shape[1]
    # the offline run's precision: its checkpoint continues as it was trained
    agent = build_agent(agent_cls, algo_config, obs_dim, act_dim, seeds, device=device,
                        max_action=max_action, precision=tc.precision)
    slots = EnvSlots(env_id, seeds, max_episode_steps=max_episode_steps, stream="finetune-env")
    if slots.observation_dim != obs_dim or slots.action_dim != act_dim:
        raise UserError(f"{env_id} has observation/action dims {slots.observation_dim}/"
                        f"{slots.action_dim}; the run's data has {obs_dim}/{act_dim}")
    buffer = ReplayBuffer(S, capacity, obs_dim, act_dim, device,
                          extras={"mc_returns": 0} if uses_returns else None)
    offline = OfflineTable(transitions, returns, device)
    sampler = MixedSampler(offline, buffer, seeds, batch_size, config.mixing_ratio, device,
                           with_returns=uses_returns)
    accumulator = MetricAccumulator()
    episode_start = np.zeros(S, dtype=np.int64)  # buffer.added when each member's episode began
    episode_success = np.zeros(S, dtype=bool)
    failure_reward = offline.reward_min if config.sparse_reward else None
    step = 0
    if resuming and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        agent.load_state_dict(state["agent"])
        buffer.load_state_dict(state["buffer"])
        slots.load_state_dict(state["envs"])
        sampler.load_state_dict(state["sampler"])
        accumulator.load_state_dict(state["accumulator"], device)
        episode_start = np.asarray(state["episode_start"], dtype=np.int64).copy()
        episode_success = np.asarray(state["episode_success"], dtype=bool).copy()
        set_global_rng_state(state["rng"])
        step = int(state["step"])
    else:
        offline_state = load_checkpoint(run.latest_checkpoint, map_location=device)
        if int(offline_state["step"]) != tc.steps:
            raise UserError(f"{run.latest_checkpoint} is at step {offline_state['step']}, not the "
                            f"run's last step {tc.steps}")
        agent.load_state_dict(offline_state["agent"])
        if config.restart_lr_schedule:
            _restart_actor_lr(agent, config.online_steps * config.utd)

    metrics_log = CsvLog(out / "metrics.csv")
    episodes_log = CsvLog(out / "episodes.csv", EPISODE_COLUMNS)
    evaluations_log = CsvLog(out / "evaluations.csv", EVAL_COLUMNS)
    if resuming:
        for log in (metrics_log, episodes_log, evaluations_log):
            log.truncate_after_step(step)
        meta.setdefault("resumed", []).append({"at": utc_now(), "step": step})
    if step == 0 and not (out / "evaluations.csv").is_file():
        # The score before fine-tuning: the offline run's last evaluation (same policy).
        last = [r for r in read_csv_rows(run.evaluations_csv) if int(r["step"]) == tc.steps]
        evaluations_log.write_rows({"step": 0, "gradient_step": tc.steps, **{
            k: r[k] for k in ("seed", "episode", "env_seed", "return", "length",
                              "normalized_score")}} for r in last)
    meta.update(status=STATUS_RUNNING, finished=None)
    write_json_atomic(meta_file, meta)

    evaluator = VectorEvaluator(env_id, S, eval_episodes, max_episode_steps=max_episode_steps)
    policy = AgentPolicy(agent, normalization, device)

    def score(returns: np.ndarray) -> np.ndarray | None:
        return 100.0 * (returns - refs[0]) / (refs[1] - refs[0]) if has_refs else None

    def evaluate_now() -> str:
        g = agent.step  # the global gradient step indexes the env seeds, as offline
        env_seeds = episode_seeds(tc.eval_seed, seeds, eval_episodes, evaluation_index=g,
                                  stream=TRAINING_EVAL_STREAM)
        result = evaluator.run(policy, env_seeds)
        scores = result.normalized_scores(refs) if has_refs else None
        evaluations_log.write_rows(
            {"step": step, "gradient_step": g, "seed": seed, "episode": e,
             "env_seed": int(result.env_seeds[m, e]), "return": float(result.returns[m, e]),
             "length": int(result.lengths[m, e]),
             "normalized_score": None if scores is None else float(scores[m, e])}
            for m, seed in enumerate(seeds) for e in range(eval_episodes))
        shown = (scores if scores is not None else result.returns).mean(axis=1)
        return (f"env step {step}: {'normalized score' if scores is not None else 'return'} "
                f"{shown.mean():.2f} (per seed: " + ", ".join(f"{s}: {v:.2f}" for s, v in zip(seeds, shown)) + ")")

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "step": step, "algo": algo, "source_run": str(run.path), "agent": agent.state_dict(),
            "buffer": buffer.state_dict(), "envs": slots.state_dict(),
            "sampler": sampler.state_dict(), "accumulator": accumulator.state_dict(),
            "episode_start": episode_start.copy(), "episode_success": episode_success.copy(),
            "rng": global_rng_state(), "normalization": normalization.to_json(),
            "config": {"algo": to_plain(algo_config), "finetune": to_plain(config)}})

    bar = progress_bar(config.online_steps, step, progress, f"finetune {algo}")
    write = print_fn if bar.disable else bar.write
    mult, bias = normalization.reward_multiplier, normalization.reward_bias
    gamma = float(getattr(algo_config, "gamma", 0.99))
    status = STATUS_RUNNING
    t_last, s_last, excluded = time.perf_counter(), step, 0.0
    try:
        with _StopFlag() as stop:
            while step < config.online_steps:
                obs = torch.from_numpy(normalization.normalize(slots.observations)).to(device)
                actions = agent.act(obs.unsqueeze(1), deterministic=False)[:, 0].float().cpu().numpy()
                raw = slots.step(actions)
                rewards = (raw["rewards"].astype(np.float64) * mult + bias).astype(np.float32)
                row = {"observations": normalization.normalize(raw["observations"]),
                       "actions": raw["actions"], "rewards": rewards,
                       "next_observations": normalization.normalize(raw["next_observations"]),
                       "terminals": raw["terminals"], "timeouts": raw["timeouts"]}
                if uses_returns:  # unknown until the episode ends: −inf leaves it uncalibrated
                    row["mc_returns"] = np.full(S, -np.inf, dtype=np.float32)
                buffer.add(row)
                step += 1
                episode_success |= raw["rewards"] > 0
                finished = np.flatnonzero(~np.isnan(raw["finished"]))
                for i in finished:
                    if uses_returns:
                        first = max(int(episode_start[i]), buffer.added - buffer.capacity)
                        pos = torch.arange(first, buffer.added) % buffer.capacity
                        r = buffer.data["rewards"][i, pos].cpu().numpy()
                        d = buffer.data["terminals"][i, pos].cpu().numpy()
                        g = _online_returns_to_go(r, d, gamma, failure_reward)
                        buffer.data["mc_returns"][i, pos] = torch.from_numpy(g).to(device)
                    ret = float(raw["finished"][i])
                    sc = score(np.array(ret))
                    episodes_log.write_rows([{
                        "step": step, "seed": seeds[i], "return": ret,
                        "length": int(raw["finished_lengths"][i]),
                        "normalized_score": None if sc is None else float(sc),
                        "success": int(episode_success[i])}])
                    episode_start[i] = buffer.added
                    episode_success[i] = False
                for _ in range(config.utd):
                    accumulator.add(agent.update(sampler.sample()))
                if step % config.log_every == 0 or step == config.online_steps:
                    means = accumulator.means()
                    now = time.perf_counter()
                    rate = (step - s_last) / max(now - t_last - excluded, 1e-9)
                    metrics_log.write_rows(
                        {"step": step, "gradient_step": agent.step, "seed": seed,
                         **{k: v[m] for k, v in means.items()}, "env_steps_per_s": rate}
                        for m, seed in enumerate(seeds))
                    t_last, s_last, excluded = now, step, 0.0
                t0 = time.perf_counter()
                if step % eval_every == 0 or step == config.online_steps:
                    write(evaluate_now())
                stopping = stop.requested or (stop_after is not None and step >= stop_after)
                if step % config.checkpoint_every == 0 or step == config.online_steps or stopping:
                    checkpoint()
                excluded += time.perf_counter() - t0
                bar.update(1)
                if stopping and step < config.online_steps:
                    status = STATUS_INTERRUPTED
                    break
            else:
                status = STATUS_COMPLETE
    except KeyboardInterrupt:
        meta.update(status=STATUS_INTERRUPTED)
        write_json_atomic(meta_file, meta)
        raise
    except Exception as exc:
        meta.update(status=STATUS_FAILED, error=f"{type(exc).__name__}: {exc}")
        write_json_atomic(meta_file, meta)
        raise
    finally:
        bar.close()
        evaluator.close()
        slots.close()

    if status != STATUS_COMPLETE:
        meta.update(status=STATUS_INTERRUPTED)
        write_json_atomic(meta_file, meta)
        print_fn(f"stopped at env step {step} with a checkpoint; run the same command to continue")
        if stop_after is None:
            raise KeyboardInterrupt
        return FinetuneResult(out, step, status)
    meta.update(status=STATUS_COMPLETE, finished=utc_now())
    write_json_atomic(meta_file, meta)
    summary = summarize(out)
    write_json_atomic(out / "summary.json", summary)
    agg = summary["mean_over_seeds"]
    print_fn(f"done: {out}")
    print_fn(f"mean over seeds: offline {agg['offline_score']:.2f} -> final "
             f"{agg['final_score']:.2f}, auc {agg['auc']:.2f}"
             + (f", regret {agg['regret']:.3f}" if config.sparse_reward else ""))
    return FinetuneResult(out, step, status, summary)
