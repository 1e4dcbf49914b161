"""The offline training loop: dataset -> normalised transitions -> sampler -> agent updates,
with evaluations, metrics, checkpoints and exact resume, all recorded in a run directory.

    transitions, normalization = prepare_transitions(dataset, training)   # CORL's preprocessing
    sampler = TransitionSampler(transitions, seeds, batch_size, device)
    agent = AgentClass(config.algo, obs_dim, act_dim, seeds, device, max_action)
    for step in 1..steps:
        metrics = agent.update(sampler.sample())           # (S,) tensors, kept on the device
        every log_every:        metrics.csv rows (means over the interval; one host sync)
        every eval_every:       evaluations.csv rows (S members × E episodes, fresh env seeds)
        every checkpoint_every: checkpoints/latest.pt (agent + sampler + loop state)

Resume (`train(..., run_dir=<existing run>)`) loads latest.pt, drops CSV rows written after it
and continues; the numbers (parameters, metrics, evaluations) are bit-for-bit those of an
uninterrupted run on the same device, because every random stream (agent, sampler, eval env
seeds) is either restored or derived from (seed, step).
"""

from __future__ import annotations

import inspect
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from offrl.algos.base import Agent
from offrl.data.dataset import Dataset, Transitions
from offrl.errors import UserError
from offrl.evaluation.rollout import VectorEvaluator, episode_seeds, make_env
from offrl.training.checkpoint import (global_rng_state, load_checkpoint, save_checkpoint,
                                       set_global_rng_state)
from offrl.training.config import RunConfig, TrainingConfig, build_config, read_config_file
from offrl.training.logging import (EVALUATION_COLUMNS, CsvLog, MetricAccumulator,
                                    TensorBoardLog, progress_bar)
from offrl.training.run_dir import (STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED,
                                    STATUS_RUNNING, RunDirectory, run_info, utc_now)

TRAINING_EVAL_STREAM = 0  # `episode_seeds` stream of evaluations during training


# ---------------------------------------------------------------------------------- preprocessing
@dataclass
class Normalization:
    """What the loop did to the data, and what the policy must undo at evaluation time.

    observation_mean, observation_std: (obs_dim,) float32; the policy sees
    (obs − mean) / std (std includes eps). reward_multiplier, reward_bias: training rewards are
    r × reward_multiplier + reward_bias. details: how these were computed (for the record).
    """

    observation_mean: np.ndarray
    observation_std: np.ndarray
    reward_multiplier: float = 1.0
    reward_bias: float = 0.0
    details: dict[str, Any] | None = None

    def normalize(self, observations: np.ndarray) -> np.ndarray:
        """(..., obs_dim) -> float32 (..., obs_dim)."""
        return ((observations - self.observation_mean) / self.observation_std).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"observation_mean": self.observation_mean.tolist(),
                "observation_std": self.observation_std.tolist(),
                "reward_multiplier": self.reward_multiplier, "reward_bias": self.reward_bias,
                **(self.details or {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Normalization":
        known = ("observation_mean", "observation_std", "reward_multiplier", "reward_bias")
        return cls(observation_mean=np.asarray(data["observation_mean"], dtype=np.float32),
                   observation_std=np.asarray(data["observation_std"], dtype=np.float32),
                   reward_multiplier=float(data.get("reward_multiplier", 1.0)),
                   reward_bias=float(data.get("reward_bias", 0.0)),
                   details={k: v for k, v in data.items() if k not in known})


def complete_episode_returns(dataset: Dataset) -> np.ndarray:
    """Returns of the episodes that ended (terminal or timeout); the trailing episode cut by the
    end of the data is left out, as CORL's `return_reward_range` leaves it out."""
    returns = dataset.episode_returns
    if len(returns) > 1:
        last = dataset.episode_ends[-1] - 1
        if not (dataset.terminals[last] or dataset.timeouts[last]):
            returns = returns[:-1]
    return returns


def prepare_transitions(dataset: Dataset,
                        training: TrainingConfig) -> tuple[Transitions, Normalization]:
    """CORL's preprocessing: the transition view, reward scaling, then state normalisation.

    Rewards: "return_range" divides by (max − min) complete-episode return and multiplies by
    `return_range_scale` (CORL: 1000 for MuJoCo IQL/CQL), then × reward_scale + reward_bias.
    States: mean and std (+ eps) over the transitions' observations, applied to observations
    and next_observations. Returns float32 transitions and the Normalization used.
    """
    t = dataset.transitions() if training.transitions == "recorded" else dataset.qlearning()
    details: dict[str, Any] = {"normalize_states": training.normalize_states,
                               "state_std_eps": training.state_std_eps,
                               "normalize_reward": training.normalize_reward,
                               "reward_scale": training.reward_scale,
                               "transitions": training.transitions}
    multiplier = 1.0
    if training.normalize_reward == "return_range":
        returns = complete_episode_returns(dataset)
        lo, hi = (float(returns.min()), float(returns.max())) if len(returns) else (0.0, 0.0)
        if not hi > lo:
            raise UserError(f"{dataset.name}: normalize_reward = 'return_range' needs episodes "
                            f"with different returns; the returns span [{lo}, {hi}]")
        multiplier = training.return_range_scale / (hi - lo)
        details.update(episode_return_min=lo, episode_return_max=hi,
                       return_range_scale=training.return_range_scale)
    multiplier *= training.reward_scale
    rewards = t.rewards
    if multiplier != 1.0 or training.reward_bias != 0.0:
        rewards = t.rewards.astype(np.float64) * multiplier + training.reward_bias
        rewards = rewards.astype(np.float32)

    obs_dim = t.observations.shape[1]
    if training.normalize_states:
        mean = t.observations.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = t.observations.std(axis=0, dtype=np.float64) + training.state_std_eps
        std = std.astype(np.float32)
    else:
        mean, std = np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32)
    norm = Normalization(mean, std, reward_multiplier=multiplier,
                         reward_bias=training.reward_bias, details=details)
    if training.normalize_states:
        t = Transitions(observations=norm.normalize(t.observations), actions=t.actions,
                        rewards=rewards, next_observations=norm.normalize(t.next_observations),
                        dones=t.dones, labelled=t.labelled)
    else:
        t = Transitions(t.observations, t.actions, rewards, t.next_observations, t.dones,
                        t.labelled)
    return t, norm


# ---------------------------------------------------------------------------------- the policy
class AgentPolicy:
    """The evaluation policy: numpy observations (S, E, obs_dim) -> actions (S, E, act_dim).

    Normalises observations exactly as the training data were, then calls
    `agent.act(·, deterministic)` once for all members and episodes.
    """

    def __init__(self, agent: Agent, normalization: Normalization, device: str | torch.device,
                 deterministic: bool = True):
        self.agent, self.normalization = agent, normalization
        self.device, self.deterministic = torch.device(device), deterministic

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.normalization.normalize(np.asarray(observations)))
        with torch.no_grad():
            actions = self.agent.act(x.to(self.device), deterministic=self.deterministic)
        return actions.float().cpu().numpy()


def env_facts(env_id: str | None, dataset_name: str) -> tuple[float, int | None]:
    """(max_action, env's own step limit) of the dataset's env; UserError if it cannot be made."""
    if not env_id:
        raise UserError(f"{dataset_name} names no env (metadata 'env_id'), so its policies "
                        "cannot be evaluated; add env_id to its card")
    try:
        env = make_env(env_id)
    except Exception as exc:
        raise UserError(f"cannot make env {env_id!r} for {dataset_name}: {exc}") from exc
    try:
        high = np.asarray(env.action_space.high, dtype=np.float64)
        low = np.asarray(env.action_space.low, dtype=np.float64)
        if not (np.allclose(high, high.flat[0]) and np.allclose(low, -high)):
            raise UserError(f"env {env_id!r} has action bounds [{low}, {high}]; the agents need "
                            "a symmetric range with one bound for every dimension")
        limit = env.spec.max_episode_steps if env.spec is not None else None
        return float(high.flat[0]), limit
    finally:
        env.close()


# ---------------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """How a `train` call ended. returns / normalized_scores: (S, E) of the last evaluation
    (normalized_scores None without reference scores)."""

    run_dir: Path
    step: int
    status: str
    returns: np.ndarray | None = None
    normalized_scores: np.ndarray | None = None


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def _resolve_agent_class(algo: str | type[Agent]) -> type[Agent]:
    if isinstance(algo, str):
        from offrl.algos import get_algorithm

        return get_algorithm(algo)
    return algo


def _stored_config(run: RunDirectory, agent_cls: type[Agent], algo_name: str) -> RunConfig:
    tables = read_config_file(run.config_toml)
    return build_config(algo_name, agent_cls.config_class, tables, source=str(run.config_toml))


def _config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    out = []
    for table in da:
        for key in sorted(set(da[table]) | set(db[table])):
            if da[table].get(key) != db[table].get(key):
                out.append(f"[{table}] {key}: {da[table].get(key)!r} (run) vs "
                           f"{db[table].get(key)!r} (now)")
    return out


class _StopFlag:
    """Turns the first Ctrl-C into a request to stop at the end of the current step (after a
    checkpoint); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def build_agent(agent_cls: type[Agent], algo_config: Any, obs_dim: int, act_dim: int,
                seeds: list[int], *, device: torch.device, max_action: float,
                precision: str = "fp32", compile: bool = False) -> Agent:
    """The agent with the run's speed options: [training] precision and torch.compile."""
    speed = {"compile": True} if compile else {}
    agent = agent_cls(algo_config, obs_dim, act_dim, seeds, device=device, max_action=max_action,
                      **speed)
    if precision != "fp32":
        try:
            agent.set_precision(precision)
        except ValueError as exc:
            raise UserError(f"[training] precision = {precision!r}: {exc}") from None
    return agent


def train(algo: str | type[Agent], dataset: Dataset, config: RunConfig | None = None, *,
          run_dir: str | Path | None = None, out: str | Path = "runs",
          device: str | torch.device = "cpu", progress: bool | None = None,
          stop_at_step: int | None = None, config_source: str | None = None,
          command: Any = None, evaluation_backend: str = "sync", compile: bool | None = None,
          print_fn: Callable[[str], None] = print) -> TrainResult:
    """Train `config.training.seeds` members of `algo` on `dataset`, recording a run directory.

    algo: a registered name ("td3_bc", "iql", …) or an Agent subclass.
    config: the resolved RunConfig; None only when resuming (the run's config.toml is used).
    run_dir: an exact run directory: a new one is created there, an existing one is resumed
        (its config must equal `config`). None: a new directory under `out`
        (`<out>/<algo>/<dataset_id>/<time>-<hash>`).
    stop_at_step: stop (with a checkpoint, status "interrupted") once this step is done.
    compile: run the agent's losses through torch.compile (a speed option: results equal eager
        within float rounding, 20-60 s of compilation first); recorded in run.json, and None
        takes a resumed run's own setting (so its resume stays bit for bit), else False.
    Prints the resolved config first, then progress and one line per evaluation.
    """
    agent_cls = _resolve_agent_class(algo)
    algo_name = agent_cls.name
    device = torch.device(device)
    run = RunDirectory(run_dir) if run_dir is not None else None
    resuming = run is not None and run.exists()

    if resuming:
        info = run.read_info()
        if info.get("algo") != algo_name:
            raise UserError(f"{run.path} is a run of {info.get('algo')!r}, not {algo_name!r}")
        data_id = dataset.metadata.get("dataset_id") or dataset.name
        if info.get("dataset_id") != data_id:
            raise UserError(f"{run.path} is a run on {info.get('dataset_id')!r}, not {data_id!r}")
        if info.get("dataset_sha256") and dataset.metadata.get("sha256") and (
                info["dataset_sha256"] != dataset.metadata["sha256"]):
            raise UserError(f"{run.path} was trained on {data_id} with sha256 "
                            f"{info['dataset_sha256']}; the data now has sha256 "
                            f"{dataset.metadata['sha256']}, so it cannot be resumed exactly")
        stored = _stored_config(run, agent_cls, algo_name)
        stored.algo = agent_cls.adapt_config(stored.algo, total_steps=stored.training.steps)
        if config is not None:
            config.algo = agent_cls.adapt_config(config.algo, total_steps=config.training.steps)
            diffs = _config_differences(stored, config)
            if diffs:
                raise UserError(f"{run.path} was started with a different config, so it cannot "
                                "be resumed with this one: " + "; ".join(diffs))
        config = stored
    elif config is None:
        raise UserError("no config given (only resuming an existing run reads the run's own)")
    else:
        config.algo = agent_cls.adapt_config(config.algo, total_steps=config.training.steps)
    tc = config.training
    tc.validate(config_source or "<config>")
    if compile is None:
        compile = bool(info.get("compile", False)) if resuming else False
    if compile and "compile" not in inspect.signature(agent_cls.__init__).parameters:
        raise UserError(f"{algo_name} has no torch.compile path (--compile)")
    if tc.precision == "bf16" and not agent_cls.bf16_networks:
        from offrl.algos import ALGORITHMS

        offered = ", ".join(name for name, cls in ALGORITHMS.items() if cls.bf16_networks)
        raise UserError(f"{config_source or '<config>'}: [training] precision = 'bf16' is not "
                        f"offered by {algo_name}, which trains in fp32 only (bf16: {offered})")
    seeds, steps = list(tc.seeds), tc.steps

    # Data, env and normalisation, exactly as CORL prepares them.
    transitions, normalization = prepare_transitions(dataset, tc)
    env_id = dataset.metadata.get("env_id")
    max_action, env_limit = env_facts(env_id, dataset.name)
    max_episode_steps = (tc.max_episode_steps or dataset.metadata.get("max_episode_steps")
                         or env_limit)
    refs = (dataset.metadata.get("ref_min_score"), dataset.metadata.get("ref_max_score"))
    has_refs = None not in refs and refs[1] > refs[0]
    config_text = config.to_toml()

    if resuming:
        stored_norm = Normalization.from_json(run.read_normalization())
        if not (np.array_equal(stored_norm.observation_mean, normalization.observation_mean)
                and np.array_equal(stored_norm.observation_std, normalization.observation_std)):
            raise UserError(f"{run.path}: the dataset's observation statistics differ from the "
                            "run's normalization.json; the data changed since the run started")
    else:
        info = run_info(algo=algo_name, dataset=dataset, seeds=seeds, steps=steps,
                        device=str(device), config_source=config_source, command=command,
                        max_episode_steps=max_episode_steps)
        info["compile"] = compile
        path = run.path if run is not None else RunDirectory.new_path(
            out, algo_name, info["dataset_id"], config_text)
        run = RunDirectory.create(path, info=info, config_text=config_text,
                                  normalization=normalization.to_json())

    # Print the resolved config first, as every run does.
    sha = dataset.metadata.get("sha256")
    print_fn(f"offrl train: {algo_name} on {dataset.name}"
             f"{f' (sha256 {sha[:12]}…)' if sha else ''}, seeds {seeds}, {steps} steps, "
             f"device {device}, {torch.get_num_threads()} torch thread(s)")
    print_fn(f"run directory: {run.path}{' (resuming)' if resuming else ''}")
    print_fn(f"config{f' (from {config_source})' if config_source and not resuming else ''}:")
    print_fn(config_text.rstrip())

    # Sampler and agent.
    from offrl.algos.sampler import TransitionSampler

    # An algorithm that needs more per transition than (s, a, r, s', d) (Cal-QL: returns-to-go)
    # brings its own sampler; its state_dict keeps resume exact like the plain one.
    make_sampler = getattr(agent_cls, "offline_sampler", None)
    sampler = (make_sampler(transitions, config.algo, seeds, tc.batch_size, device) if make_sampler
               else TransitionSampler(transitions, seeds, tc.batch_size, device))
    obs_dim, act_dim = transitions.observations.shape[1], transitions.actions.shape[1]
    agent = build_agent(agent_cls, config.algo, obs_dim, act_dim, seeds, device=device,
                        max_action=max_action, precision=tc.precision, compile=compile)
    accumulator = MetricAccumulator()
    start = 0
    if resuming and run.latest_checkpoint.is_file():
        state = load_checkpoint(run.latest_checkpoint, map_location=device)
        agent.load_state_dict(state["agent"])
        sampler.load_state_dict(state["sampler"])
        accumulator.load_state_dict(state["loop"]["metrics"], device)
        set_global_rng_state(state["loop"]["rng"])
        start = int(state["step"])
    info = run.read_info()
    if resuming and info.get("status") == STATUS_COMPLETE and start >= steps:
        print_fn(f"{run.path} is already complete ({steps} steps)")
        return _result_from_csv(run, steps)

    metrics_log = CsvLog(run.metrics_csv)
    evaluations_log = CsvLog(run.evaluations_csv, EVALUATION_COLUMNS)
    if resuming:
        # Rows after the checkpoint were written by the run that stopped; they come again.
        metrics_log.truncate_after_step(start)
        evaluations_log.truncate_after_step(start)
        run.update_info(status=STATUS_RUNNING, finished=None, error=None,
                        resumed=info.get("resumed", []) + [{"at": utc_now(), "step": start}])
    tensorboard = TensorBoardLog(run.tensorboard_dir, enabled=tc.tensorboard,
                                 purge_step=start + 1 if resuming else None)

    evaluator = VectorEvaluator(env_id, len(seeds), tc.eval_episodes,
                                max_episode_steps=max_episode_steps, backend=evaluation_backend)
    policy = AgentPolicy(agent, normalization, device)
    last_returns = last_scores = None

    def checkpoint(step: int) -> None:
        state = {"step": step, "algo": algo_name, "config": config.to_dict(),
                 "observation_dim": obs_dim, "action_dim": act_dim, "max_action": max_action,
                 "normalization": normalization.to_json(), "agent": agent.state_dict(),
                 "sampler": sampler.state_dict(),
                 "loop": {"metrics": accumulator.state_dict(), "rng": global_rng_state()}}
        save_checkpoint(run.latest_checkpoint, state)
        if tc.keep_checkpoints:
            save_checkpoint(run.step_checkpoint(step), state)

    def evaluate_now(step: int) -> None:
        nonlocal last_returns, last_scores
        t0 = time.perf_counter()
        env_seeds = episode_seeds(tc.eval_seed, seeds, tc.eval_episodes, evaluation_index=step,
                                  stream=TRAINING_EVAL_STREAM)
        rollouts = evaluator.run(policy, env_seeds)
        scores = rollouts.normalized_scores(refs) if has_refs else None
        rows = []
        for m, seed in enumerate(seeds):
            for e in range(tc.eval_episodes):
                rows.append({"step": step, "seed": seed, "episode": e,
                             "env_seed": int(rollouts.env_seeds[m, e]),
                             "return": float(rollouts.returns[m, e]),
                             "length": int(rollouts.lengths[m, e]),
                             "normalized_score": None if scores is None else float(scores[m, e])})
        evaluations_log.write_rows(rows)
        last_returns, last_scores = rollouts.returns, scores
        shown = scores if scores is not None else rollouts.returns
        per_seed = shown.mean(axis=1)
        tensorboard.scalars("eval", {"return": rollouts.returns.mean(axis=1),
                                     **({"normalized_score": per_seed} if scores is not None
                                        else {})}, seeds, step)
        what = "normalized score" if scores is not None else "return"
        write(f"step {step}: {what} {per_seed.mean():.2f} (per seed: "
              + ", ".join(f"{s}: {v:.2f}" for s, v in zip(seeds, per_seed))
              + f"), mean length {rollouts.lengths.mean():.0f} "
              f"[{time.perf_counter() - t0:.1f} s]")

    bar = progress_bar(steps, start, progress, f"{algo_name} {dataset.name}")

    def write(line: str) -> None:
        if bar.disable:
            print_fn(line)
        else:
            bar.write(line)

    status = STATUS_RUNNING
    step = start
    interval_start, excluded, last_log_step = time.perf_counter(), 0.0, start
    try:
        with _StopFlag() as stop:
            for step in range(start + 1, steps + 1):
                accumulator.add(agent.update(sampler.sample()))
                if _due(step, tc.log_every, steps):
                    means = accumulator.means()  # the one host sync of the interval
                    now = time.perf_counter()
                    busy = now - interval_start - excluded  # evaluation and checkpoints excluded
                    ups = (step - last_log_step) / busy if busy > 0 else math.nan
                    metrics_log.write_rows(
                        {"step": step, "seed": seed, **{k: v[m] for k, v in means.items()},
                         "updates_per_s": ups} for m, seed in enumerate(seeds))
                    tensorboard.scalars("train", means, seeds, step)
                    tensorboard.scalar("perf/updates_per_s", ups, step)
                    interval_start, excluded, last_log_step = now, 0.0, step
                    if not bar.disable:
                        bar.set_postfix({k: f"{float(np.mean(v)):.3g}" for k, v in
                                         list(means.items())[:3]}, refresh=False)
                t0 = time.perf_counter()
                if _due(step, tc.eval_every, steps):
                    evaluate_now(step)
                stopping = stop.requested or (stop_at_step is not None and step >= stop_at_step)
                if _due(step, tc.checkpoint_every, steps) or stopping:
                    checkpoint(step)
                excluded += time.perf_counter() - t0
                bar.update(1)
                if stopping and step < steps:
                    status = STATUS_INTERRUPTED
                    break
            else:
                status = STATUS_COMPLETE
    except KeyboardInterrupt:
        run.update_info(status=STATUS_INTERRUPTED)
        raise
    except Exception as exc:
        run.update_info(status=STATUS_FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        bar.close()
        tensorboard.close()
        evaluator.close()

    if status == STATUS_COMPLETE:
        run.update_info(status=STATUS_COMPLETE, finished=utc_now())
        if last_returns is None:  # resumed right at the end: the last evaluation is on disk
            return _result_from_csv(run, steps)
        shown = last_scores if last_scores is not None else last_returns
        print_fn(f"done: {run.path}")
        print_fn("last evaluation, mean over episodes per seed: " + ", ".join(
            f"{s}: {v:.2f}" for s, v in zip(seeds, shown.mean(axis=1))))
    else:
        run.update_info(status=STATUS_INTERRUPTED)
        print_fn(f"stopped at step {step} with a checkpoint; continue with "
                 f"`offrl train --resume {run.path}`")
        if stop_at_step is None:
            raise KeyboardInterrupt
    return TrainResult(run.path, step, status, last_returns, last_scores)


def _result_from_csv(run: RunDirectory, steps: int) -> TrainResult:
    from offrl.training.logging import read_csv_rows

    rows = [r for r in read_csv_rows(run.evaluations_csv) if int(r["step"]) == steps]
    if not rows:
        return TrainResult(run.path, steps, STATUS_COMPLETE)
    seeds = list(dict.fromkeys(int(r["seed"]) for r in rows))
    returns = np.array([[float(r["return"]) for r in rows if int(r["seed"]) == s] for s in seeds])
    scores = None
    if all(r["normalized_score"] != "" for r in rows):
        scores = np.array([[float(r["normalized_score"]) for r in rows if int(r["seed"]) == s]
                           for s in seeds])
    return TrainResult(run.path, steps, STATUS_COMPLETE, returns, scores)
