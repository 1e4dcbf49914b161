"""Write the offrl MuJoCo dataset cards from a behaviour-policy selection, build and record them.

    .venv/bin/python scripts/make_offrl_cards.py hopper             # write the cards
    .venv/bin/python scripts/make_offrl_cards.py hopper --build     # + build each, record sha256
    .venv/bin/python scripts/make_offrl_cards.py hopper --build --report   # + dataset reports

Reads datasets/policies/<env>-v5-selection.json (written by `offrl behaviour select`) and writes
datasets/offrl/<env>-{random,medium,expert,medium-replay,medium-expert}-v0.toml and the small
variants <env>-{medium,expert}-100k-v0 and <env>-medium-expert-200k-v0. Reference returns are
the selection's uniform-random and expert means over its 100 episodes. With --build every card
is built with `offrl datasets build` (through the library) and the file's sha256, size and this
platform are written back into the card; --report writes evaluation/reports/datasets/<id>.md.
With $OFFRL_REPLAY_RUN set to the original behaviour run, medium-replay is cut from its replay
instead of re-training SAC.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "datasets" / "offrl"
POLICIES = ROOT / "datasets" / "policies"
ENVS = {"hopper": ("Hopper-v5", 11, 3), "halfcheetah": ("HalfCheetah-v5", 17, 6),
        "walker2d": ("Walker2d-v5", 17, 6),
        # A small MuJoCo task SAC solves in ~20k steps: the whole recipe (policies, cards, builds,
        # reports, medium-replay by re-running SAC) end to end in minutes on a CPU.
        "inverteddoublependulum": ("InvertedDoublePendulum-v5", 9, 1)}
SEEDS = {"random": 0, "medium": 1, "expert": 2}


def card_text(card_id: str, env_id: str, description: str, recipe: dict, ref_min: float,
              ref_max: float, obs: int, act: int, note: str) -> str:
    lines = [f'id = "{card_id}"', f'env_id = "{env_id}"', f'description = "{description}"',
             "max_episode_steps = 1000", "", "[source.recipe]"]
    for key, value in recipe.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(json.dumps(v) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    lines += ["", "[scores]", f"ref_min_score = {ref_min!r}", f"ref_max_score = {ref_max!r}",
              "approximate = false", f'note = "{note}"', "", "[spaces]",
              f"observation_shape = [{obs}]", f"action_shape = [{act}]", ""]
    return "\n".join(lines)


def write_cards(env: str) -> list[str]:
    from offrl.data.hashing import sha256_file

    env_id, obs, act = ENVS[env]
    prefix = f"{env}-v5"
    selection = json.loads((POLICIES / f"{prefix}-selection.json").read_text())
    ref_min, ref_max = selection["random"]["mean"], selection["expert"]["mean"]
    note = (f"Mean returns over {selection['random']['episodes']} episodes on {env_id}: the "
            f"uniform-random policy and the expert policy ({prefix}-expert.pt, stochastic actions), "
            "measured by `offrl behaviour select`.")
    medium_step, expert_step = selection["medium"]["step"], selection["expert"]["step"]
    pol = {k: {"policy": f"../policies/{prefix}-{k}.pt",
               "policy_sha256": sha256_file(POLICIES / f"{prefix}-{k}.pt")} for k in ("medium", "expert")}
    base = {"env_id": env_id, "max_episode_steps": 1000}
    cards = {
        f"{env}-random-v0": ({"policy": "uniform-random", **base, "seed": SEEDS["random"],
                              "transitions": 1_000_000},
                             f"1M steps of a uniform-random policy in {env_id}"),
        f"{env}-medium-v0": ({**pol["medium"], **base, "seed": SEEDS["medium"], "transitions": 1_000_000,
                              "envs": 16, "actions": "stochastic"},
                             f"1M steps of the medium SAC policy (step {medium_step}, about a third "
                             f"of expert return) in {env_id}, stochastic actions"),
        f"{env}-expert-v0": ({**pol["expert"], **base, "seed": SEEDS["expert"], "transitions": 1_000_000,
                              "envs": 16, "actions": "stochastic"},
                             f"1M steps of the expert SAC policy (step {expert_step}) in {env_id}, "
                             "stochastic actions"),
        f"{env}-medium-replay-v0": ({"policy": "sac-replay", "run_config": f"../policies/{prefix}-sac.toml",
                                     **base, "seed": selection["seed"], "transitions": medium_step},
                                    f"the SAC replay buffer up to the medium checkpoint ({medium_step} "
                                    f"steps) in {env_id}; rebuilt by re-running SAC"),
        f"{env}-medium-expert-v0": ({"policy": "combine", "combine": [f"{env}-medium-v0", f"{env}-expert-v0"],
                                     **base, "seed": 0, "transitions": 2_000_000},
                                    f"{env}-medium-v0 followed by {env}-expert-v0 (2M steps)"),
        f"{env}-medium-100k-v0": ({**pol["medium"], **base, "seed": 11, "transitions": 100_000,
                                   "envs": 16, "actions": "stochastic"},
                                  f"100k steps of the medium SAC policy in {env_id} (small variant)"),
        f"{env}-expert-100k-v0": ({**pol["expert"], **base, "seed": 12, "transitions": 100_000,
                                   "envs": 16, "actions": "stochastic"},
                                  f"100k steps of the expert SAC policy in {env_id} (small variant)"),
        f"{env}-medium-expert-200k-v0": ({"policy": "combine",
                                          "combine": [f"{env}-medium-100k-v0", f"{env}-expert-100k-v0"],
                                          **base, "seed": 0, "transitions": 200_000},
                                         f"{env}-medium-100k-v0 followed by {env}-expert-100k-v0"),
    }
    for card_id, (recipe, description) in cards.items():
        path = CARDS / f"{card_id}.toml"
        old = path.read_text() if path.is_file() else ""
        text = card_text(card_id, env_id, description, recipe, ref_min, ref_max, obs, act, note)
        kept = re.findall(r"^build_(?:sha256|bytes|platform) = .*$", old, flags=re.M)
        if kept and f"transitions = {recipe['transitions']}" in old and all(
                f'{k} = "{v}"' in old for k, v in recipe.items() if k.endswith("sha256")):
            text = text.replace("\n\n[scores]", "\n" + "\n".join(kept) + "\n\n[scores]")
        path.write_text(text)
    # The existing small random cards now take their reference scores from our policies too.
    for size in ("10k", "100k"):
        path = CARDS / f"{env}-random-{size}-v0.toml"
        if path.is_file():
            text = path.read_text()
            text = re.sub(r"ref_min_score = .*", f"ref_min_score = {ref_min!r}", text)
            text = re.sub(r"ref_max_score = .*", f"ref_max_score = {ref_max!r}", text)
            text = re.sub(r"approximate = .*", "approximate = false", text)
            text = re.sub(r'note = ".*"', f'note = "{note}"', text)
            path.write_text(text)
    return list(cards)


def record_build(card_id: str, report: bool) -> None:
    from offrl.data.generate import platform_tag
    from offrl.data.hashing import sha256_file
    from offrl.data.load import fetch, load_dataset
    from offrl.data.registry import get_card

    card = get_card(card_id)
    path = fetch(card, progress=True)
    digest, size = sha256_file(path), path.stat().st_size
    text = card.path.read_text()
    text = re.sub(r"^build_(sha256|bytes|platform) = .*\n", "", text, flags=re.M)
    text = text.replace("\n\n[scores]", f'\nbuild_sha256 = "{digest}"\nbuild_bytes = {size}\n'
                        f'build_platform = "{platform_tag()}"\n\n[scores]')
    card.path.write_text(text)
    print(f"{card_id}: {size} bytes, sha256 {digest}")
    if report:
        from offrl.evaluation.dataset_report import write_dataset_report

        env = card_id.split("-")[0]
        reference = load_dataset(f"{env}-medium-replay-v0", progress=False) if card_id != f"{env}-medium-replay-v0" else None
        data = load_dataset(card, progress=False)
        write_dataset_report(data, ROOT / "evaluation" / "reports" / "datasets", dataset_id=card_id,
                             card=get_card(card_id), reference=reference or data,
                             reference_id=f"{env}-medium-replay-v0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env", choices=sorted(ENVS))
    parser.add_argument("--build", action="store_true", help="build every card, record its sha256")
    parser.add_argument("--report", action="store_true", help="write dataset reports (with --build)")
    parser.add_argument("--only", nargs="*", help="build only these ids")
    args = parser.parse_args(argv)
    import offrl.training.behaviour  # noqa: F401  (registers the sac-replay builder)

    ids = write_cards(args.env)
    print(f"wrote {len(ids)} cards to {CARDS}")
    if args.build:
        # medium-replay first: it is the SACo reference of every report.
        order = sorted(ids, key=lambda i: (not i.endswith("medium-replay-v0"), i))
        for card_id in order:
            if args.only and card_id not in args.only:
                continue
            record_build(card_id, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
