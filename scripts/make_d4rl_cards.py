"""Write the dataset cards under datasets/: the D4RL MuJoCo v2 files and offrl's random datasets.

    .venv/bin/python scripts/make_d4rl_cards.py [--tsv PATH] [--episodes 100]

D4RL cards come from the url/bytes/sha256 table (shared/reference/d4rl-mujoco-v2.tsv, beside
the repo) and D4RL's REF_MIN/REF_MAX. The uniform-random cards get their ref_min_score by
running the uniform-random policy for `--episodes` episodes on the v5 env (seed 12345, not a
dataset seed); their ref_max_score is D4RL's expert reference, marked approximate.
Re-running rewrites the cards with the same content.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CARDS = REPO / "datasets"

# D4RL's infos.py: REF_MIN_SCORE / REF_MAX_SCORE (random and expert returns on the v3 envs).
D4RL_REFS = {"hopper": (-20.272305, 3234.3), "halfcheetah": (-280.178953, 12135.0),
             "walker2d": (1.629008, 4592.3)}
ENVS = {"hopper": ("Hopper", (11,), (3,)), "halfcheetah": ("HalfCheetah", (17,), (6,)),
        "walker2d": ("Walker2d", (17,), (6,))}
KINDS = {
    "random": "1M steps of a uniform-random policy",
    "medium": "1M steps of an rlkit SAC policy stopped early at about 1/3 of expert return",
    "expert": "1M steps of a converged rlkit SAC policy",
    "medium-replay": "the SAC replay buffer up to the medium checkpoint",
    "medium-expert": "the medium dataset followed by the expert dataset (about 2M steps)",
    "full-replay": "the whole SAC replay buffer, from the first step to the expert policy",
}
RANDOM_CARDS = [("hopper", 10_000, 0), ("hopper", 100_000, 1), ("halfcheetah", 10_000, 0),
                ("halfcheetah", 100_000, 1), ("walker2d", 10_000, 0), ("walker2d", 100_000, 1)]
REF_MIN_SEED = 12345


def q(s: str) -> str:
    """A TOML basic string (JSON's escaping is valid TOML for these texts)."""
    return json.dumps(s, ensure_ascii=False)


def card_text(*, card_id: str, env_id: str, description: str, source: str, ref_min: float,
              ref_max: float, note: str, obs: tuple, act: tuple) -> str:
    return f"""\
id = {q(card_id)}
env_id = {q(env_id)}
description = {q(description)}
max_episode_steps = 1000

{source.strip()}

[scores]
ref_min_score = {ref_min!r}
ref_max_score = {ref_max!r}
approximate = true
note = {q(note)}

[spaces]
observation_shape = {list(obs)}
action_shape = {list(act)}
"""


def d4rl_cards(tsv: Path) -> dict[str, str]:
    cards = {}
    with open(tsv) as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")]
    for url, size, sha in rows[1:]:
        stem = Path(url).stem  # e.g. hopper_medium_replay-v2
        env, rest = stem.split("_", 1)
        kind = rest.removesuffix("-v2").replace("_", "-")
        card_id = f"{env}-{kind}-v2"
        name, obs, act = ENVS[env]
        lo, hi = D4RL_REFS[env]
        cards[card_id] = card_text(
            card_id=card_id, env_id=f"{name}-v4",
            description=f"D4RL {name} {kind} (v2): {KINDS[kind]}.",
            source=f'[source]\nurl = {q(url)}\nbytes = {int(size)}\nsha256 = {q(sha)}\n'
                   'format = "d4rl-hdf5"',
            ref_min=lo, ref_max=hi, obs=obs, act=act,
            note=(f"D4RL's REF_MIN/REF_MAX for {name}, measured with gym's {name}-v3 on "
                  f"mujoco-py, as D4RL's v2 files were made. offrl evaluates on Gymnasium "
                  f"{name}-v4 (same spaces and reward, on the `mujoco` bindings, since "
                  "mujoco-py cannot be installed); simulator differences make normalised "
                  "scores close to, not identical with, published D4RL numbers."))
    return cards


def random_cards(episodes: int) -> dict[str, str]:
    from offrl.data.generate import uniform_random_returns

    cards = {}
    ref_min = {}
    for env, transitions, seed in RANDOM_CARDS:
        name, obs, act = ENVS[env]
        env_id = f"{name}-v5"
        if env not in ref_min:
            returns = uniform_random_returns(env_id, episodes=episodes, seed=REF_MIN_SEED)
            ref_min[env] = round(float(returns.mean()), 6)
            print(f"{env_id}: uniform-random return {returns.mean():.3f} ± "
                  f"{returns.std():.3f} over {episodes} episodes")
        size = f"{transitions // 1000}k"
        card_id = f"{env}-random-{size}-v0"
        cards[card_id] = card_text(
            card_id=card_id, env_id=env_id,
            description=(f"{transitions:,} steps of a uniform-random policy in {env_id}, "
                         "1000-step episodes; generated locally, no download."),
            source=(f'[source.recipe]\npolicy = "uniform-random"\nenv_id = {q(env_id)}\n'
                    f"seed = {seed}\ntransitions = {transitions}\nmax_episode_steps = 1000"),
            ref_min=ref_min[env], ref_max=D4RL_REFS[env][1], obs=obs, act=act,
            note=(f"ref_min_score was measured on {env_id}: the mean return of the uniform-random "
                  f"policy over {episodes} episodes (seed {REF_MIN_SEED}, "
                  "scripts/make_d4rl_cards.py). ref_max_score is D4RL's expert return on "
                  f"gym's {name}-v3 (mujoco-py), a stand-in until offrl ships an expert "
                  f"policy for {env_id}."))
    return cards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tsv", type=Path,
                        default=REPO.parent / "shared" / "reference" / "d4rl-mujoco-v2.tsv")
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()

    from offrl.data.registry import parse_card

    for folder, cards in (("d4rl", d4rl_cards(args.tsv)), ("offrl", random_cards(args.episodes))):
        (CARDS / folder).mkdir(parents=True, exist_ok=True)
        for card_id, text in cards.items():
            path = CARDS / folder / f"{card_id}.toml"
            path.write_text(text)
            parse_card(path)  # fail here, not later, on a bad card
        print(f"wrote {len(cards)} cards to {CARDS / folder}")


if __name__ == "__main__":
    main()
