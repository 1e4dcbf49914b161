"""Online SAC training of behaviour policies, resumable, with a policy snapshot per evaluation.

The offrl MuJoCo datasets are collected with policies trained here, as D4RL's were with rlkit's
SAC. A run directory:

    run.json            env, seeds, protocol, versions, git commit, status
    config.toml         [sac] and [behaviour], every field
    metrics.csv         step, seed, SAC losses..., env_steps_per_s (means over log_every steps)
    episodes.csv        step, seed, return, length: every training episode (the learning curve)
    evaluations.csv     step, seed, mode (stochastic|deterministic), episode, env_seed, return, length
    snapshots/seed_<s>/step_<N>.pt   the policy at each evaluation (offrl.data.policies format)
    checkpoints/latest.pt            exact resume: agent, replay buffer, envs, RNG, counters
    replay_seed_<s>.npz              the whole replay buffer in order, written at the end

Every env step of every member adds one transition; after `learning_starts` uniform-random steps
each env step is followed by `updates_per_step` SAC updates. A run stopped (Ctrl-C, SIGTERM, a
crash after a checkpoint) and started again with the same command continues from its latest
checkpoint and produces the same numbers, bit for bit on CPU with the same thread count.

Evaluation runs the snapshot itself (the exact code that will later generate datasets) in a
vector of S × eval_episodes envs, each episode seeded distinctly, with stochastic actions
(how D4RL collected data) and deterministic ones.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offrl.algos.base import derive_seed, member_generators
from offrl.algos.sac import SAC, SACConfig
from offrl.data.policies import TanhGaussianPolicy, save_policy
from offrl.errors import UserError
from offrl.evaluation.rollout import VectorEvaluator, episode_seeds
from offrl.training.checkpoint import load_checkpoint, save_checkpoint
from offrl.training.config import dump_toml, to_plain
from offrl.training.logging import CsvLog, MetricAccumulator, progress_bar, read_csv_rows
from offrl.training.online import EnvSlots, ReplayBuffer
from offrl.training.run_dir import git_commit, utc_now, write_json_atomic, write_text_atomic

__all__ = ["BehaviourConfig", "train_behaviour", "evaluation_curve"]

EVAL_COLUMNS = ["step", "seed", "mode", "episode", "env_seed", "return", "length"]
EPISODE_COLUMNS = ["step", "seed", "return", "length"]


@dataclass
class BehaviourConfig:
    """The online protocol (steps count env steps per member)."""

    env_id: str = "Hopper-v5"
    steps: int = 1_000_000
    learning_starts: int = 5_000  # uniform-random actions, no updates, before this many steps
    updates_per_step: int = 1
    batch_size: int = 256
    buffer_size: int | None = None  # None: `steps` (keep every transition: medium-replay is cut from it)
    eval_every: int = 10_000
    eval_episodes: int = 10
    eval_seed: int = 0
    checkpoint_every: int = 50_000
    log_every: int = 5_000
    max_episode_steps: int | None = None  # None: the env's registered limit (1000 for MuJoCo)
    record_physics: bool = True  # keep qpos/qvel per step (D4RL's infos) in the replay buffer

    def __post_init__(self) -> None:
        for name in ("steps", "updates_per_step", "batch_size", "eval_every", "eval_episodes",
                     "checkpoint_every", "log_every"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"BehaviourConfig.{name} must be positive; got {getattr(self, name)!r}")
        if self.learning_starts < 1:
            raise ValueError("BehaviourConfig.learning_starts must be >= 1 (the buffer must hold "
                             "a transition before the first update)")


class _StopOnSignal:
    """SIGINT/SIGTERM request a stop at the next step boundary (after a checkpoint)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _snapshot_path(run_dir: Path, seed: int, step: int) -> Path:
    return run_dir / "snapshots" / f"seed_{seed}" / f"step_{step:08d}.pt"


def _evaluate(policies: list[TanhGaussianPolicy], config: BehaviourConfig, seeds: list[int],
              step: int, evaluator: VectorEvaluator) -> list[dict[str, Any]]:
    rows = []
    S, E = len(seeds), config.eval_episodes
    for stream, mode in ((0, "stochastic"), (1, "deterministic")):
        env_seeds = episode_seeds(config.eval_seed, seeds, E, evaluation_index=step, stream=stream)
        rng = np.random.default_rng([config.eval_seed, step, stream, 0x5AC])

        def policy(obs: np.ndarray) -> np.ndarray:
            out = []
            for s, p in enumerate(policies):
                noise = rng.standard_normal((E, p.action_dim)) if mode == "stochastic" else None
                out.append(p.act(obs[s], noise))
            return np.stack(out)

        result = evaluator.run(policy, env_seeds)
        for s in range(S):
            for e in range(E):
                rows.append({"step": step, "seed": seeds[s], "mode": mode, "episode": e,
                             "env_seed": int(result.env_seeds[s, e]),
                             "return": float(result.returns[s, e]),
                             "length": int(result.lengths[s, e])})
    return rows


def evaluation_curve(run_dir: str | Path, mode: str = "stochastic") -> dict[int, dict[int, float]]:
    """{seed: {step: mean return}} from a run's evaluations.csv."""
    sums: dict[int, dict[int, list[float]]] = {}
    for row in read_csv_rows(Path(run_dir) / "evaluations.csv"):
        if row["mode"] != mode:
            continue
        sums.setdefault(int(row["seed"]), {}).setdefault(int(row["step"]), []).append(float(row["return"]))
    return {s: {t: float(np.mean(v)) for t, v in sorted(d.items())} for s, d in sums.items()}


def train_behaviour(run_dir: str | Path, config: BehaviourConfig | None = None,
                    sac_config: SACConfig | None = None, seeds: list[int] | None = None, *,
                    device: str = "cpu", progress: bool | None = None,
                    command: Any = None, stop_after: int | None = None) -> Path:
    """Train (or resume) SAC online in `run_dir`. Returns the run directory.

    stop_after: stop (with a checkpoint, status "interrupted") once this many env steps are
    done, e.g. to time-box a session; the same call without it continues.

    A run directory that already has a config resumes with that config; passing a different
    one is an error (start a new directory instead).
    """
    run_dir = Path(run_dir)
    seeds = [0] if seeds is None else [int(s) for s in seeds]
    config = config or BehaviourConfig()
    sac_config = sac_config or SACConfig()
    config_text = dump_toml({"sac": to_plain(sac_config), "behaviour": to_plain(config)})
    config_file, info_file = run_dir / "config.toml", run_dir / "run.json"
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    if config_file.is_file():
        if config_file.read_text() != config_text:
            raise UserError(f"{run_dir} holds a run with a different config; use a new directory "
                            f"(or the same arguments to resume it)")
        info = json.loads(info_file.read_text())
        if info["seeds"] != seeds:
            raise UserError(f"{run_dir} was started with seeds {info['seeds']}, not {seeds}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        commit, dirty = git_commit()
        from offrl import __version__

        info = {"kind": "behaviour", "algo": "sac", "env_id": config.env_id, "seeds": seeds,
                "steps": config.steps, "offrl_version": __version__, "git_commit": commit,
                "git_dirty": dirty, "torch_version": torch.__version__,
                "threads": torch.get_num_threads(), "device": device, "started": utc_now(),
                "finished": None, "status": "running", "command": command}
        write_text_atomic(config_file, config_text)
        write_json_atomic(info_file, info)

    slots = EnvSlots(config.env_id, seeds, max_episode_steps=config.max_episode_steps,
                     record_physics=config.record_physics)
    A, O = slots.action_dim, slots.observation_dim
    if not (np.allclose(slots.action_low, -slots.action_high) and np.ptp(slots.action_high) == 0):
        raise UserError(f"{config.env_id}: SAC here needs a symmetric box action space with one "
                        f"bound; got low {slots.action_low}, high {slots.action_high}")
    max_action = float(slots.action_high[0])
    agent = SAC(sac_config, O, A, seeds, device=device, max_action=max_action)
    extras = {}
    if slots.record_physics:
        qpos, qvel = slots.qpos_qvel()
        extras = {"qpos": qpos.shape[1], "qvel": qvel.shape[1]}
    buffer = ReplayBuffer(len(seeds), config.buffer_size or config.steps, O, A, device, extras)
    sample_generators = member_generators(seeds, "replay-sampler", device)
    explore_generators = member_generators(seeds, "explore")
    accumulator = MetricAccumulator()
    metrics_log = CsvLog(run_dir / "metrics.csv")
    episodes_log = CsvLog(run_dir / "episodes.csv", EPISODE_COLUMNS)
    eval_log = CsvLog(run_dir / "evaluations.csv", EVAL_COLUMNS)

    step = 0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        agent.load_state_dict(state["agent"])
        buffer.load_state_dict(state["buffer"])
        slots.load_state_dict(state["envs"])
        for g, st in zip(sample_generators, state["sample_generators"]):
            g.set_state(st.cpu())
        for g, st in zip(explore_generators, state["explore_generators"]):
            g.set_state(st.cpu())
        accumulator.load_state_dict(state["accumulator"], device)
        step = int(state["step"])
        for log in (metrics_log, episodes_log, eval_log):
            log.truncate_after_step(step)
        info.setdefault("resumed", []).append({"at": utc_now(), "step": step})
    info.update(status="running", finished=None)
    write_json_atomic(info_file, info)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "step": step, "algo": "sac", "agent": agent.state_dict(),
            "buffer": buffer.state_dict(), "envs": slots.state_dict(),
            "sample_generators": [g.get_state() for g in sample_generators],
            "explore_generators": [g.get_state() for g in explore_generators],
            "accumulator": accumulator.state_dict()})

    evaluator = VectorEvaluator(config.env_id, len(seeds), config.eval_episodes,
                                max_episode_steps=config.max_episode_steps)
    last_log_time, last_log_step = time.perf_counter(), step
    bar = progress_bar(config.steps, step, progress, f"sac {config.env_id}")
    bar.unit = "step"
    try:
        with _StopOnSignal() as stop:
            while step < config.steps:
                if step < config.learning_starts:
                    actions = np.stack([
                        (torch.rand(A, generator=g) * 2 - 1).numpy() for g in explore_generators]) * max_action
                else:
                    obs = torch.as_tensor(slots.observations, device=agent.device).unsqueeze(1)
                    actions = agent.act(obs, deterministic=False)[:, 0].cpu().numpy()
                rows = slots.step(actions)
                buffer.add(rows)
                step += 1
                finished = np.flatnonzero(~np.isnan(rows["finished"]))
                if finished.size:
                    episodes_log.write_rows(
                        {"step": step, "seed": seeds[i], "return": float(rows["finished"][i]),
                         "length": int(rows["finished_lengths"][i])} for i in finished)
                if step >= config.learning_starts:
                    for _ in range(config.updates_per_step):
                        accumulator.add(agent.update(buffer.sample(config.batch_size, sample_generators)))
                if step % config.log_every == 0 and accumulator.count:
                    now = time.perf_counter()
                    rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                    means = accumulator.means()
                    metrics_log.write_rows(
                        {"step": step, "seed": seed, **{k: float(v[i]) for k, v in means.items()},
                         "env_steps_per_s": rate} for i, seed in enumerate(seeds))
                    last_log_time, last_log_step = now, step
                    bar.set_postfix_str(", ".join(f"{k}={float(np.mean(v)):.3g}"
                                                  for k, v in means.items() if k in ("q_mean", "alpha")))
                if step % config.eval_every == 0 or step == config.steps:
                    policies = []
                    for i, seed in enumerate(seeds):
                        p = TanhGaussianPolicy.from_weights(
                            agent.policy_weights(i), config.env_id,
                            {"algo": "sac", "seed": seed, "step": step, "run": run_dir.name})
                        save_policy(_snapshot_path(run_dir, seed, step), p)
                        policies.append(p)
                    eval_rows = _evaluate(policies, config, seeds, step, evaluator)
                    eval_log.write_rows(eval_rows)
                    stoch = [r["return"] for r in eval_rows if r["mode"] == "stochastic"]
                    bar.write(f"step {step}: stochastic return {np.mean(stoch):.1f} "
                              f"(min {np.min(stoch):.1f}, max {np.max(stoch):.1f})")
                    last_log_time = time.perf_counter()  # rates exclude evaluation time
                if stop_after is not None and step >= stop_after:
                    stop.requested = True
                if step % config.checkpoint_every == 0 or step == config.steps or stop.requested:
                    checkpoint()
                    last_log_time = time.perf_counter()
                bar.update(1)
                if stop.requested and step < config.steps:
                    info.update(status="interrupted")
                    write_json_atomic(info_file, info)
                    bar.write(f"stopped at step {step}; run the same command to resume")
                    return run_dir
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            info.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            write_json_atomic(info_file, info)
        raise
    finally:
        bar.close()
        evaluator.close()
        slots.close()

    for i, seed in enumerate(seeds):
        np.savez(run_dir / f"replay_seed_{seed}.npz", **buffer.contents(i))
    info.update(status="complete", finished=utc_now())
    write_json_atomic(info_file, info)
    return run_dir


# ---------------------------------------------------------------------- medium-replay datasets
def read_behaviour_config(path: str | Path) -> tuple[SACConfig, BehaviourConfig]:
    """The ([sac], [behaviour]) tables of a behaviour run's config.toml."""
    import tomllib

    from offrl.training.config import ConfigError, dataclass_from_dict

    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"behaviour run config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"behaviour run config {path}: not valid TOML: {exc}") from exc
    unknown = set(tables) - {"sac", "behaviour"}
    if unknown:
        raise ConfigError(f"{path}: unknown tables {sorted(unknown)}; expected [sac] and [behaviour]")
    sac = dataclass_from_dict(SACConfig, tables.get("sac", {}), source=str(path), table="sac")
    behaviour = dataclass_from_dict(BehaviourConfig, tables.get("behaviour", {}), source=str(path),
                                    table="behaviour")
    return sac, behaviour


def replay_rows(run_dir: str | Path, seed: int, transitions: int) -> dict[str, np.ndarray] | None:
    """The first `transitions` replay rows of member `seed` of a behaviour run, from its final
    replay file or its latest checkpoint; None if the run has not got that far."""
    run_dir = Path(run_dir)
    final = run_dir / f"replay_seed_{seed}.npz"
    if final.is_file():
        with np.load(final) as z:
            if len(z["rewards"]) >= transitions:
                return {k: z[k][:transitions] for k in z.files}
    ckpt = run_dir / "checkpoints" / "latest.pt"
    if not ckpt.is_file():
        return None
    state = load_checkpoint(ckpt)
    buf = state["buffer"]
    if int(state["step"]) < transitions or buf["size"] < transitions or buf["capacity"] < transitions:
        return None
    member = json.loads((run_dir / "run.json").read_text())["seeds"].index(seed)
    return {k: v[member, :transitions].numpy() for k, v in buf["data"].items()}


def replay_dataset(rows: dict[str, np.ndarray], env_id: str, max_episode_steps: int):
    """A Dataset (D4RL layout) from replay rows in the order they were collected."""
    from offrl.data.dataset import Dataset

    terminals, timeouts = rows["terminals"] > 0.5, rows["timeouts"] > 0.5
    infos = {k: rows[k].astype(np.float64) for k in ("qpos", "qvel") if k in rows}
    return Dataset(observations=rows["observations"].astype(np.float32),
                   actions=rows["actions"].astype(np.float32),
                   rewards=rows["rewards"].astype(np.float32), terminals=terminals,
                   timeouts=timeouts,
                   episode_starts=Dataset.episode_starts_from_flags(terminals, timeouts),
                   next_observations=rows["next_observations"].astype(np.float32), infos=infos,
                   metadata={"env_id": env_id, "algorithm": "sac",
                             "max_episode_steps": max_episode_steps})


def build_replay_recipe(recipe: Any, card: Any, progress: bool):
    """The "sac-replay" recipe: SAC's replay buffer up to `recipe.transitions` env steps.

    Re-runs SAC from scratch with the recorded config and seed (resumable: the run lives in
    $OFFRL_HOME/behaviour-replays/<id>), stopping at that step. With $OFFRL_REPLAY_RUN naming
    the original run directory (same config and seed), its replay is used instead of
    re-training. Both give the same rows on the platform that trained the original.
    """
    import os

    from offrl.data.cache import offrl_home

    config_path = Path(recipe.run_config)
    if not config_path.is_absolute() and card is not None:
        config_path = card.path.parent / config_path
    sac, behaviour = read_behaviour_config(config_path)
    if behaviour.env_id != recipe.env_id:
        raise UserError(f"{config_path} trains on {behaviour.env_id}, the recipe needs {recipe.env_id}")
    given = os.environ.get("OFFRL_REPLAY_RUN")
    if given:
        run_dir = Path(given)
        if (run_dir / "config.toml").read_text() != config_path.read_text():
            raise UserError(f"$OFFRL_REPLAY_RUN={run_dir} was trained with a different config "
                            f"than {config_path}")
    else:
        run_dir = offrl_home() / "behaviour-replays" / (card.id if card else f"seed{recipe.seed}")
        if replay_rows(run_dir, recipe.seed, recipe.transitions) is None:
            train_behaviour(run_dir, behaviour, sac, seeds=[recipe.seed], progress=progress,
                            stop_after=recipe.transitions, command={"recipe": card.id if card else None})
    rows = replay_rows(run_dir, recipe.seed, recipe.transitions)
    if rows is None:
        raise UserError(f"{run_dir} has not reached step {recipe.transitions} for seed {recipe.seed}")
    data = replay_dataset(rows, recipe.env_id, recipe.max_episode_steps)
    data.metadata.update(seed=recipe.seed, run_config=config_path.name)
    return data


def _register() -> None:
    from offrl.data.generate import register_recipe_builder

    register_recipe_builder("sac-replay", build_replay_recipe)


_register()


# ---------------------------------------------------------------------- choosing the policies
def policy_returns(policy: TanhGaussianPolicy, env_id: str, episodes: int, seed: int, *,
                   stochastic: bool = True, max_episode_steps: int | None = None) -> np.ndarray:
    """(episodes,) returns of a behaviour policy, each episode seeded distinctly from `seed`
    (stream 2: never the seeds of the evaluations during training)."""
    env_seeds = episode_seeds(seed, [0], episodes, evaluation_index=0, stream=2)
    rng = np.random.default_rng([seed, 0x5E1EC7])

    def act(obs: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((episodes, policy.action_dim)) if stochastic else None
        return policy.act(obs[0], noise)[None]

    with VectorEvaluator(env_id, 1, episodes, max_episode_steps=max_episode_steps) as ev:
        return ev.run(act, env_seeds).returns[0]


def select_policies(run_dir: str | Path, out_dir: str | Path, name: str, *, episodes: int = 100,
                    candidates: int = 3, seed: int = 12345,
                    log: Any = print) -> dict[str, Any]:
    """Choose the expert and medium snapshots of a behaviour run, as D4RL defined them, and
    write them with their provenance to `out_dir`.

    expert: of the `candidates` snapshots with the best stochastic evaluation during training,
    the one with the best mean return over `episodes` fresh episodes (stochastic actions).
    medium: of the `candidates` earlier snapshots whose training evaluation is closest to a
    third of that return, the one whose `episodes`-episode mean is closest to it.
    Also measures the uniform-random policy over `episodes` episodes (the reference minimum).

    Writes <name>-expert.pt, <name>-medium.pt (policy files), <name>-sac.toml (the run's
    config, which regenerates medium-replay), <name>-curve.csv (evaluation curve) and
    <name>-selection.json (steps, returns, the command that trained the run). Returns the
    selection record.
    """
    from offrl.data.generate import uniform_random_returns
    from offrl.data.policies import load_policy

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = json.loads((run_dir / "run.json").read_text())
    if info.get("status") != "complete":
        log(f"note: {run_dir} is {info.get('status')} (selecting from the snapshots so far)")
    env_id, member = info["env_id"], info["seeds"][0]
    _, behaviour = read_behaviour_config(run_dir / "config.toml")
    curve = evaluation_curve(run_dir, "stochastic").get(member, {})
    det_curve = evaluation_curve(run_dir, "deterministic").get(member, {})
    if len(curve) < 2:
        raise UserError(f"{run_dir} has fewer than two evaluated snapshots")

    def measure(step: int) -> np.ndarray:
        policy = load_policy(_snapshot_path(run_dir, member, step))
        returns = policy_returns(policy, env_id, episodes, seed,
                                 max_episode_steps=behaviour.max_episode_steps)
        log(f"  step {step}: {returns.mean():.1f} ± {returns.std():.1f} over {episodes} episodes")
        return returns

    log(f"{name}: expert candidates")
    best = sorted(curve, key=lambda t: -curve[t])[:candidates]
    measured = {t: measure(t) for t in best}
    expert_step = max(measured, key=lambda t: measured[t].mean())
    expert = measured[expert_step]
    target = expert.mean() / 3
    log(f"{name}: medium candidates (target {target:.1f})")
    earlier = [t for t in curve if t < expert_step]
    near = sorted(earlier, key=lambda t: abs(curve[t] - target))[:candidates]
    for t in near:
        if t not in measured:
            measured[t] = measure(t)
    medium_step = min(near, key=lambda t: abs(measured[t].mean() - target))
    medium = measured[medium_step]
    random = uniform_random_returns(env_id, episodes=episodes, seed=seed,
                                    max_episode_steps=behaviour.max_episode_steps or 1000)
    log(f"{name}: uniform random {random.mean():.1f} ± {random.std():.1f}")

    out_dir.mkdir(parents=True, exist_ok=True)

    def stats(returns: np.ndarray) -> dict[str, float]:
        return {"mean": float(returns.mean()), "std": float(returns.std()),
                "min": float(returns.min()), "max": float(returns.max()), "episodes": len(returns)}

    record = {"name": name, "env_id": env_id, "seed": member, "run": str(run_dir),
              "run_steps_done": max(curve), "run_status": info.get("status"),
              "command": info.get("command"), "git_commit": info.get("git_commit"),
              "offrl_version": info.get("offrl_version"), "threads": info.get("threads"),
              "evaluation_seed": seed, "actions": "stochastic",
              "expert": {"step": expert_step, **stats(expert)},
              "medium": {"step": medium_step, "target": float(target), **stats(medium)},
              "random": stats(random),
              "candidates": {str(t): float(r.mean()) for t, r in sorted(measured.items())}}
    for kind, step, returns in (("expert", expert_step, expert), ("medium", medium_step, medium)):
        policy = load_policy(_snapshot_path(run_dir, member, step))
        policy.meta.update(kind=kind, env_id=env_id, training_step=step,
                           returns_mean=float(returns.mean()), returns_episodes=len(returns))
        save_policy(out_dir / f"{name}-{kind}.pt", policy)
    write_text_atomic(out_dir / f"{name}-sac.toml", (run_dir / "config.toml").read_text())
    lines = ["step,stochastic_mean_return,deterministic_mean_return"]
    lines += [f"{t},{curve[t]!r},{det_curve.get(t, float('nan'))!r}" for t in sorted(curve)]
    write_text_atomic(out_dir / f"{name}-curve.csv", "\n".join(lines) + "\n")
    write_json_atomic(out_dir / f"{name}-selection.json", record)
    return record
