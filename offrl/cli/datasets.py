"""`offrl datasets …`: list, inspect, download, build, locate and convert datasets, and make
semi-supervised ones (hide-actions, label)."""

from __future__ import annotations

import argparse
from pathlib import Path

from offrl.data.load import HDF5_SUFFIXES, MINARI_PREFIX, load_any_dataset
from offrl.errors import UserError

EXAMPLES = """\
examples:
  offrl datasets list                       every registered dataset, and whether it is cached
  offrl datasets info hopper-medium-v2      the card, plus statistics if it is cached
  offrl datasets download hopper-medium-v2  fetch a D4RL file (checked against its sha256)
  offrl datasets build hopper-random-10k-v0 generate a recipe dataset locally (no network)
  offrl datasets build hopper-medium-v0 --minari   and as Minari dataset offrl/hopper/medium-v0
  offrl datasets report hopper-medium-v0 --reference hopper-medium-replay-v0
                                            return histogram, statistics, TQ and SACo
  offrl datasets path hopper-random-10k-v0  print where the file is
  offrl datasets convert hopper-random-10k-v0 minari:offrl/hopper/random-10k-v0
  offrl datasets convert minari:offrl/hopper/random-10k-v0 /tmp/hopper-random.hdf5
  offrl datasets hide-actions hopper-medium-v2 --fraction 0.1 --from lowest-50% --seed 0
                                            keep the actions of 10% of the trajectories (SS-ORL)
  offrl datasets label hopper-medium-v2-labelled10-lowest50-s0 \
        --idm-config baselines/idm/default.toml   fill the hidden actions by inverse dynamics

Files are cached under $OFFRL_HOME (default ~/.offrl); extra cards are read from the
folders in $OFFRL_CARDS.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasets", help="list, download, build, inspect and convert datasets",
        description="Registered datasets: D4RL downloads, Minari datasets and generated ones.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    sub = parser.add_subparsers(dest="datasets_command", metavar="ACTION")

    p = sub.add_parser("list", help="table of registered datasets (id, env, source, size, cached)")
    p.add_argument("--source", choices=["url", "minari", "recipe"], help="only this source kind")
    p.add_argument("--cached", action="store_true", help="only datasets present on this machine")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="a dataset's card, and its statistics when cached")
    p.add_argument("id", help="dataset id, e.g. hopper-medium-v2")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("report", help="return distribution, statistics, TQ and SACo of a dataset",
                       description="Write <out>/<id>.md, .json and _returns.png: the histogram of "
                       "complete-episode returns, mean/min/max return, episodes, TQ (against the "
                       "card's reference returns) and SACo (against --reference, e.g. the "
                       "env's medium-replay dataset).")
    p.add_argument("id", help="dataset id")
    p.add_argument("--reference", help="dataset id whose (state, action) coverage is SACo's denominator")
    p.add_argument("--out", default="evaluation/reports/datasets", help="output folder")
    p.add_argument("--bin-width", type=float, default=0.5, help="SACo bin width in reference stds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("download", help="fetch a dataset into the cache (builds recipe datasets)")
    p.add_argument("id", help="dataset id, e.g. hopper-medium-v2")
    p.add_argument("--force", action="store_true", help="fetch again even if a good copy is cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("build", help="generate a recipe dataset (e.g. hopper-random-10k-v0)",
                       description="Generate a recipe dataset from its card (uniform-random, a "
                       "shipped behaviour policy, a combination, or a SAC replay) into the cache, "
                       "and compare its sha256 with the one the card records (a difference only "
                       "warns: floating point differs across platforms).")
    p.add_argument("id", help="id of a card with a [source.recipe]")
    p.add_argument("--force", action="store_true", help="build again even if it is cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--minari", nargs="?", const="auto", metavar="MINARI_ID",
                   help="also write a Minari dataset (default id: offrl/<env>/<name>, e.g. "
                        "offrl/hopper/medium-v0 for hopper-medium-v0)")
    p.add_argument("--from-run", metavar="RUN_DIR",
                   help="sac-replay recipes: take the replay from this behaviour run instead of "
                        "re-running SAC ($OFFRL_REPLAY_RUN)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("path", help="print the local path of a cached dataset")
    p.add_argument("id", help="dataset id")
    p.set_defaults(func=cmd_path)

    p = sub.add_parser(
        "convert", help="convert between D4RL HDF5 files, Minari datasets and registered ids",
        description="SRC: an .hdf5 file, a Minari dataset (minari:ID or its folder) or a "
                    "registered dataset id. DST: an .hdf5 path or minari:ID.",
        epilog="examples:\n  offrl datasets convert hopper-random-10k-v0 "
               "minari:offrl/hopper/random-10k-v0\n  offrl datasets convert "
               "minari:mujoco/hopper/medium-v0 hopper-medium.hdf5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="an .hdf5 file, minari:ID, a Minari dataset folder, or a dataset id")
    p.add_argument("dst", help="an .hdf5 path or minari:ID")
    p.add_argument("--force", action="store_true", help="overwrite an existing .hdf5 DST")
    p.add_argument("--drop-last-step", action="store_true",
                   help="Minari DST: drop each episode's last step when no next observation "
                        "was recorded (D4RL files)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    derived_help = ("ID: a registered id, an .hdf5 file, minari:ID, a Minari folder, or the id "
                    "of a dataset written earlier by hide-actions / label (found under "
                    "$OFFRL_HOME/datasets/<id>/<id>.hdf5).")
    p = sub.add_parser(
        "hide-actions", help="make a semi-supervised dataset: keep the actions of a fraction of "
                             "the trajectories",
        description="Keep the actions of FRACTION of all trajectories, drawn from a return "
                    "range (SS-ORL: --fraction 0.1 --from lowest-50%); the other rows lose "
                    "their actions (NaN, unlabelled). " + derived_help,
        epilog="examples:\n  offrl datasets hide-actions hopper-medium-v2 --fraction 0.1 "
               "--from lowest-50%\n  offrl datasets hide-actions data.hdf5 --fraction 0.25 "
               "--from random --seed 3 --out data-25.hdf5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="ID", help="the dataset to split (see above)")
    p.add_argument("--fraction", type=float, required=True,
                   help="fraction of all trajectories that keep their actions, in (0, 1]")
    p.add_argument("--from", dest="by", default="lowest-50%", metavar="RANGE",
                   help="where the kept trajectories are drawn from: random, lowest-P%%, "
                        "highest-P%% or quantile:LO-HI (default: lowest-50%%)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    _output_arguments(p)
    p.set_defaults(func=cmd_hide_actions)

    p = sub.add_parser(
        "label", help="fill missing actions with an inverse dynamics model (proxy labels)",
        description="Train an inverse dynamics model on the rows with recorded actions, fill "
                    "the rows without one (flagged in infos/action_is_proxy) and write the "
                    "result. " + derived_help,
        epilog="example:\n  offrl datasets label hopper-medium-v2-labelled10-lowest50-s0 "
               "--idm-config baselines/idm/default.toml --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="ID", help="the dataset to label (see above)")
    p.add_argument("--idm-config", required=True, metavar="FILE",
                   help="IDM config TOML with an [idm] table (e.g. baselines/idm/default.toml)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, … (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    _output_arguments(p)
    p.set_defaults(func=cmd_label)


def _output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE",
                   help="the .hdf5 to write (default: $OFFRL_HOME/datasets/<new id>/<new id>.hdf5)")
    p.add_argument("--minari", metavar="ID", help="also write a Minari dataset with this id")
    p.add_argument("--force", action="store_true", help="overwrite an existing .hdf5 output")
    p.add_argument("--quiet", action="store_true", help="no progress output")


# ---------------------------------------------------------------------------------- helpers
def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def _size_text(card) -> str:
    from offrl.data.registry import RecipeSource, UrlSource

    if isinstance(card.source, UrlSource):
        return _human_bytes(card.source.bytes)
    if isinstance(card.source, RecipeSource):
        return f"{card.source.transitions:,} steps"
    return "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)


# ---------------------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    from offrl.data.load import is_cached
    from offrl.data.registry import list_cards

    rows = [["id", "env", "source", "size", "cached"]]
    for card in list_cards():
        cached = is_cached(card)
        if (args.source and card.source_kind != args.source) or (args.cached and not cached):
            continue
        rows.append([card.id, card.env_id, card.source_kind, _size_text(card),
                     "yes" if cached else "no"])
    if len(rows) == 1:
        print("no datasets match")
        return 0
    print(_table(rows))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from offrl.data.load import is_cached, load_dataset, local_path
    from offrl.data.registry import get_card

    card = get_card(args.id)
    lines = [("id", card.id), ("description", card.description), ("env", card.env_id),
             ("card", card.path), ("source", card.source_kind)]
    for name, value in vars(card.source).items():
        lines.append((f"  {name}", value))
    s = card.scores
    lines += [("ref_min_score", s.ref_min_score), ("ref_max_score", s.ref_max_score),
              ("approximate", s.approximate)]
    if s.note:
        lines.append(("score note", s.note))
    lines += [("observation_shape", card.observation_shape), ("action_shape", card.action_shape),
              ("max_episode_steps", card.max_episode_steps),
              ("local path", local_path(card)), ("cached", "yes" if is_cached(card) else "no")]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {_fmt(value)}")
    if is_cached(card):
        dataset = load_dataset(card, fetch_missing=False, progress=False)
        summary = dataset.summary()
        if card.source_kind == "minari":
            from offrl.data.load import arrays_sha256

            summary["sha256"] = arrays_sha256(dataset)  # what the card's sha256 may record
        print("\ncached dataset:")
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            if key not in ("dataset_id", "env_id"):
                print(f"  {key.ljust(width)}  {_fmt(value)}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from offrl.data.load import fetch
    from offrl.data.registry import RecipeSource, get_card

    card = get_card(args.id)
    if isinstance(card.source, RecipeSource):
        print(f"{card.id} is generated, not downloaded; building it")
    print(fetch(card, progress=not args.quiet, force=args.force))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from offrl.data.load import fetch
    from offrl.data.registry import RecipeSource, get_card

    card = get_card(args.id)
    if not isinstance(card.source, RecipeSource):
        raise UserError(f"{card.id} has a {card.source_kind} source, not a recipe; "
                        f"use `offrl datasets download {card.id}`")
    if args.from_run:
        import os

        os.environ["OFFRL_REPLAY_RUN"] = str(Path(args.from_run).resolve())
    path = fetch(card, progress=not args.quiet, force=args.force)
    print(path)
    if args.minari:
        from offrl.data.load import load_dataset
        from offrl.data.minari_io import write_minari

        minari_id = minari_id_for(card.id) if args.minari == "auto" else args.minari
        where = write_minari(load_dataset(card, progress=False), minari_id, env_id=card.env_id)
        print(f"minari:{minari_id} ({where})")
    return 0


def minari_id_for(dataset_id: str) -> str:
    """offrl's Minari id for a dataset id: hopper-medium-v0 -> offrl/hopper/medium-v0."""
    env, _, rest = dataset_id.partition("-")
    if not rest:
        raise UserError(f"cannot derive a Minari id from {dataset_id!r}; give --minari NAMESPACE/ENV/NAME-vN")
    return f"offrl/{env}/{rest}"


def cmd_report(args: argparse.Namespace) -> int:
    from offrl.data.load import load_dataset
    from offrl.data.registry import get_card
    from offrl.evaluation.dataset_report import write_dataset_report

    card = get_card(args.id)
    data = load_dataset(card, progress=not args.quiet)
    reference = None
    if args.reference:
        reference = load_dataset(args.reference, progress=not args.quiet)
    md = write_dataset_report(data, args.out, dataset_id=card.id, card=card, reference=reference,
                              reference_id=args.reference, bin_width=args.bin_width)
    print(md)
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    from offrl.data.load import require_local
    from offrl.data.registry import get_card

    print(require_local(get_card(args.id)))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    dst = args.dst
    if not dst.startswith(MINARI_PREFIX) and Path(dst).suffix not in HDF5_SUFFIXES:
        raise UserError(f"DST {dst!r} must be an .hdf5 path or minari:ID "
                        "(e.g. minari:offrl/hopper/random-10k-v0)")
    if Path(dst).suffix in HDF5_SUFFIXES and Path(dst).exists() and not args.force:
        raise UserError(f"{dst} exists; pass --force to overwrite it")
    dataset = load_any_dataset(args.src, progress=not args.quiet, derived=False)
    if dst.startswith(MINARI_PREFIX):
        from offrl.data.minari_io import write_minari

        out = write_minari(dataset, dst[len(MINARI_PREFIX):],
                           env_id=dataset.metadata.get("env_id"),
                           drop_last_step=args.drop_last_step)
    else:
        from offrl.data.hdf5 import write_hdf5

        out = Path(dst)
        write_hdf5(dataset, out)
    print(f"wrote {len(dataset):,} transitions in {dataset.num_episodes:,} episodes to {out}")
    return 0


# ---------------------------------------------------------------------------------- semi-supervised
def _write_derived(dataset, args: argparse.Namespace) -> list[str]:
    """Write the .hdf5 (args.out or the cache) and, if asked, the Minari copy; their names."""
    from offrl.data.hdf5 import write_hdf5
    from offrl.data.load import derived_dataset_path

    new_id = dataset.metadata["dataset_id"]
    out = Path(args.out).expanduser() if args.out else derived_dataset_path(new_id)
    if out.suffix not in HDF5_SUFFIXES:
        raise UserError(f"--out {args.out!r} must end in .hdf5 or .h5")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    written = [str(write_hdf5(dataset, out))]
    if args.minari:
        from offrl.data.minari_io import write_minari

        where = write_minari(dataset, args.minari, env_id=dataset.metadata.get("env_id"))
        written.append(f"minari:{args.minari} ({where})")
    return written


def cmd_hide_actions(args: argparse.Namespace) -> int:
    from offrl.data.semi_supervised import hide_actions

    dataset = load_any_dataset(args.src, progress=not args.quiet)
    hidden = hide_actions(dataset, args.fraction, by=args.by, seed=args.seed)
    split = hidden.metadata["semi_supervised"]
    written = _write_derived(hidden, args)
    print(f"{hidden.metadata['dataset_id']}: kept the actions of {split['labelled_episodes']} of "
          f"{split['episodes']} trajectories ({split['labelled_transitions']:,} of "
          f"{split['transitions']:,} transitions), drawn from {args.by!r} with seed {args.seed}")
    for name in written:
        print(f"wrote {name}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from offrl.data.labelling import IDMConfig, label_actions

    config = IDMConfig.from_toml(args.idm_config)  # before loading: a bad config fails fast
    import torch

    if args.threads is not None:
        if args.threads <= 0:
            raise UserError(f"--threads must be positive; got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"--device {device!r} is not usable here: {exc}") from exc
    dataset = load_any_dataset(args.src, progress=not args.quiet)
    labelled = label_actions(dataset, config, device=device, progress=not args.quiet,
                             log=None if args.quiet else print)
    info = labelled.metadata["labelling"]
    written = _write_derived(labelled, args)
    if info.get("heldout_mse") is not None:
        print(f"IDM held-out action MSE {info['heldout_mse']:.5g} vs action variance "
              f"{info['action_variance']:.5g} (R^2 {info['heldout_r2']:.4f}) on "
              f"{info['heldout_trajectories']} held-out trajectories, best at step "
              f"{info['best_step']} of {info['steps']}")
    print(f"{labelled.metadata['dataset_id']}: {info['proxy_transitions']:,} proxy actions, "
          f"{info['recorded_transitions']:,} recorded, {info['unlabellable_transitions']:,} left "
          "unlabelled (no next state)")
    for name in written:
        print(f"wrote {name}")
    return 0
