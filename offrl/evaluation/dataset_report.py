"""A report per dataset: return distribution plot, return statistics, TQ and SACo.

Writes `<out>/<id>.md` (a table people read), `<id>.json` (the same numbers for programs) and
`<id>_returns.png` (histogram of complete-episode returns with the card's random and expert
reference returns marked).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from offrl.data.dataset import Dataset
from offrl.data.quality import complete_episode_returns, dataset_quality

__all__ = ["write_dataset_report"]


def write_dataset_report(dataset: Dataset, out_dir: str | Path, *, dataset_id: str,
                         card: Any = None, reference: Dataset | None = None,
                         reference_id: str | None = None, bin_width: float = 0.5) -> Path:
    """Write the report files; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    random_return = getattr(card, "ref_min_score", None)
    expert_return = getattr(card, "ref_max_score", None)
    quality = dataset_quality(dataset, random_return=random_return, expert_return=expert_return,
                              reference=reference, reference_name=reference_id, bin_width=bin_width)
    safe = dataset_id.replace("/", "--")
    returns = complete_episode_returns(dataset)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(returns, bins=min(50, max(5, len(returns) // 4)), color="#4c72b0", alpha=0.85)
    for value, label, colour in ((random_return, "random (card)", "#c44e52"),
                                 (expert_return, "expert (card)", "#55a868")):
        if value is not None:
            ax.axvline(value, color=colour, ls="--", lw=1.2, label=label)
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(f"{dataset_id}: {len(returns)} complete episodes")
    if random_return is not None or expert_return is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / f"{safe}_returns.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    record = {"dataset_id": dataset_id, **quality.to_dict(),
              "ref_min_score": random_return, "ref_max_score": expert_return,
              "sha256": dataset.metadata.get("sha256")}
    (out_dir / f"{safe}.json").write_text(json.dumps(record, indent=2) + "\n")

    def fmt(v: Any, digits: int = 1) -> str:
        return "—" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    lines = [
        f"# Dataset report: {dataset_id}", "",
        f"![returns]({png.name})", "",
        "| measure | value |", "|---|---|",
        f"| transitions | {quality.transitions} |",
        f"| episodes (complete) | {quality.episodes} ({quality.complete_episodes}) |",
        f"| mean return ± std | {fmt(quality.mean_return)} ± {fmt(quality.std_return)} |",
        f"| min / max return | {fmt(quality.min_return)} / {fmt(quality.max_return)} |",
        f"| reference random / expert return | {fmt(random_return)} / {fmt(expert_return)} |",
        f"| TQ | {fmt(quality.tq, 3)} |",
        f"| SACo (vs {reference_id or '—'}, bins of {bin_width} std) | {fmt(quality.saco, 3)} |",
        "",
        "TQ = (mean return − random) / (expert − random), with the card's reference returns. "
        "SACo = unique discretised (state, action) pairs / those of the reference replay dataset. "
        "Returns are over complete episodes only.",
    ]
    if dataset.metadata.get("sha256"):
        lines += ["", f"sha256 of the file: `{dataset.metadata['sha256']}`"]
    md = out_dir / f"{safe}.md"
    md.write_text("\n".join(lines) + "\n")
    return md
