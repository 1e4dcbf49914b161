"""Render standings as Markdown (leaderboard/README.md) and as one self-contained HTML page.

Every string that came from a submission is escaped (`html.escape` for HTML and for Markdown,
which GitHub renders as HTML, plus the Markdown table characters). The HTML page carries a
Content-Security-Policy that allows no scripts at all. Profiles are inline SVG.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from offrl.evaluation import stats
from offrl.leaderboard.standings import Row, SuiteStandings

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def esc(text: object) -> str:
    """HTML-escape anything (quotes included)."""
    return html.escape(str(text), quote=True)


def md(text: object, limit: int = 300) -> str:
    """Text for a Markdown table cell: HTML-escaped, table and emphasis characters escaped,
    newlines and control characters removed, cut at `limit`."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))
    if len(text) > limit:
        text = text[:limit] + "…"
    text = esc(text)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>])", r"\\\1", text)


def _iv(iv: stats.Interval | None, digits: int = 1) -> str:
    if iv is None:
        return "—"
    return f"{iv.point:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def _safe_href(href: str) -> str | None:
    """Only relative links and http(s) URLs; anything else (javascript:, data:) is dropped."""
    if re.match(r"^(https?://|/|\.{0,2}/)?[A-Za-z0-9._~/%+-]*(\?[A-Za-z0-9._~=&%-]*)?$", href) \
            and not href.lower().startswith(("javascript", "data")):
        return href
    return None


def _links_md(links: Mapping[str, str]) -> str:
    parts = []
    for label, href in links.items():
        safe = _safe_href(href)
        if safe:
            parts.append(f"[{md(label)}]({safe.replace(' ', '%20')})")
    return " · ".join(parts) or "—"


def _links_html(links: Mapping[str, str]) -> str:
    parts = []
    for label, href in links.items():
        safe = _safe_href(href)
        if safe:
            parts.append(f'<a href="{esc(safe)}">{esc(label)}</a>')
    return " · ".join(parts) or "—"


# ---------------------------------------------------------------------------------- markdown
def render_markdown(standings: list[SuiteStandings], *, title: str = "offrl leaderboard",
                    profile_images: Mapping[str, str] | None = None) -> str:
    """The board as Markdown; profile_images: {suite key: relative path of its SVG}."""
    lines = [f"# {md(title)}", "",
             "Scores are normalised (0 = the card's reference minimum, 100 = its maximum), each "
             "run's the mean over its final-evaluation episodes (last iterate). Aggregates are "
             "recomputed from the submitted raw returns: IQM, mean and median with 95% "
             "stratified-bootstrap intervals; P(> leader) is the probability that a run of the "
             "submission beats a run of the leader. Status: *verified* (policies re-run on "
             "fresh env seeds reproduce the claims), *pending*, or *flagged* (listed, not "
             "ranked). Rebuild with `offrl leaderboard build`.", ""]
    if not standings:
        lines += ["No submissions yet. Build one with `offrl submit RUN_DIRS... --name NAME "
                  "--suite SUITE`.", ""]
    for s in standings:
        key = f"{s.suite}-{s.version}"
        lines += [f"## Suite {md(s.suite)} (version {md(s.version)})", "",
                  f"Datasets: {', '.join(md(d) for d in s.datasets)}.", ""]
        if s.rows:
            lines += ["| rank | submission | algorithm | IQM | mean | median | P(> leader) | "
                      "seeds | status | files |",
                      "|---:|:---|:---|---:|---:|---:|---:|---:|:---|:---|"]
            for r in s.rows:
                e = r.entry
                lines.append(
                    f"| {r.rank} | {md(e.submission.name)} | {md(e.submission.algorithm)} | "
                    f"{_iv(r.aggregates['IQM'])} | {_iv(r.aggregates['Mean'])} | "
                    f"{_iv(r.aggregates['Median'])} | {_iv(r.improvement_vs_leader, 2)} | "
                    f"{r.seeds} | {md(e.status)} | {_links_md(e.links)} |")
            lines += ["", "Per-dataset mean score [95% interval]:", "",
                      "| submission | " + " | ".join(md(d) for d in s.datasets) + " |",
                      "|:---|" + "---:|" * len(s.datasets)]
            for r in s.rows:
                lines.append(f"| {md(r.name)} | "
                             + " | ".join(_iv(iv) for iv in r.per_dataset) + " |")
            lines.append("")
            if profile_images and key in profile_images:
                lines += [f"![performance profiles of {md(s.suite)}]({profile_images[key]})",
                          ""]
        else:
            lines += ["No ranked submissions.", ""]
        if s.flagged:
            lines += ["Flagged (claimed returns not reproduced; not ranked):", ""]
            for e in s.flagged:
                lines.append(f"- {md(e.submission.name)} ({md(e.submission.algorithm)}): "
                             f"{md(e.message, 600)} {_links_md(e.links)}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------- svg
def profiles_svg(standings: SuiteStandings, width: int = 640, height: int = 360) -> str:
    """Run-score performance profiles (fraction of runs with score > τ) as an SVG string."""
    left, right, top, bottom = 50, 170, 20, 40
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="performance profiles">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
             'stroke="#999"/>']
    profiles = standings.profiles
    if not profiles:
        parts.append("</svg>")
        return "".join(parts)
    taus = next(iter(profiles.values())).taus
    lo, hi = float(taus[0]), float(taus[-1])
    span = hi - lo or 1.0

    def xy(tau: float, frac: float) -> str:
        return f"{left + (tau - lo) / span * pw:.1f},{top + (1 - frac) * ph:.1f}"

    for i, (name, prof) in enumerate(profiles.items()):
        color = _COLORS[i % len(_COLORS)]
        band = [xy(t, f) for t, f in zip(prof.taus, prof.high)]
        band += [xy(t, f) for t, f in zip(prof.taus[::-1], prof.low[::-1])]
        parts.append(f'<polygon points="{" ".join(band)}" fill="{color}" '
                     'fill-opacity="0.15" stroke="none"/>')
        line = " ".join(xy(t, f) for t, f in zip(prof.taus, prof.point))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" '
                     'stroke-width="2"/>')
        parts.append(f'<text x="{left + pw + 10}" y="{top + 14 + 16 * i}" font-size="12" '
                     f'fill="{color}">{esc(name)}</text>')
    for frac in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{left - 6}" y="{top + (1 - frac) * ph + 4:.1f}" '
                     f'font-size="11" text-anchor="end">{frac:g}</text>')
    for tau in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{left + (tau - lo) / span * pw:.1f}" y="{top + ph + 16}" '
                     f'font-size="11" text-anchor="middle">{tau:.0f}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" font-size="12" '
                 'text-anchor="middle">normalized score τ (fraction of runs with score &gt; τ)'
                 '</text></svg>')
    return "".join(parts)


# ---------------------------------------------------------------------------------- html
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:nth-child(2), td:nth-child(2), td.text { text-align: left; }
tr.flagged td { color: #a00; }
.status-verified { color: #070; } .status-pending { color: #a60; }
.status-flagged { color: #a00; }
"""


def _row_html(r: Row, datasets: list[str]) -> str:
    e = r.entry
    cells = [f"<td>{r.rank}</td>",
             f'<td class="text name">{esc(e.submission.name)}</td>',
             f'<td class="text">{esc(e.submission.algorithm)}</td>',
             f"<td>{esc(_iv(r.aggregates['IQM']))}</td>",
             f"<td>{esc(_iv(r.aggregates['Mean']))}</td>",
             f"<td>{esc(_iv(r.aggregates['Median']))}</td>",
             f"<td>{esc(_iv(r.improvement_vs_leader, 2))}</td>",
             *[f"<td>{esc(_iv(iv))}</td>" for iv in r.per_dataset],
             f"<td>{r.seeds}</td>",
             f'<td class="text status-{esc(e.status)}">{esc(e.status)}</td>',
             f'<td class="text">{_links_html(e.links)}</td>',
             f'<td class="text">{esc(e.submission.description[:300])}</td>']
    return (f'<tr class="ranked" data-rank="{r.rank}" data-name="{esc(e.submission.name)}">'
            + "".join(cells) + "</tr>")


def render_html(standings: list[SuiteStandings], *, title: str = "offrl leaderboard") -> str:
    """The board as one HTML page (no scripts; inline CSS and SVG)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
           f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{esc(title)}</h1>",
           "<p>Normalised scores (last iterate), aggregates recomputed from raw returns with "
           "95% stratified-bootstrap intervals. P(&gt; leader): probability that a run of the "
           "submission beats a run of the leader. Flagged submissions are not ranked.</p>"]
    if not standings:
        out.append("<p>No submissions yet.</p>")
    for s in standings:
        out.append(f'<section class="suite" data-suite="{esc(s.suite)}">'
                   f"<h2>Suite {esc(s.suite)} (version {esc(s.version)})</h2>")
        if s.rows:
            head = ["rank", "submission", "algorithm", "IQM", "mean", "median",
                    "P(&gt; leader)", *[esc(d) for d in s.datasets], "seeds", "status",
                    "files", "description"]
            out.append('<table class="board"><thead><tr>'
                       + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>")
            out += [_row_html(r, s.datasets) for r in s.rows]
            out.append("</tbody></table>")
            out.append("<h3>Performance profiles</h3>" + profiles_svg(s))
        else:
            out.append("<p>No ranked submissions.</p>")
        if s.flagged:
            out.append("<h3>Flagged</h3><ul>")
            for e in s.flagged:
                out.append(f'<li class="flagged">{esc(e.submission.name)} '
                           f"({esc(e.submission.algorithm)}): {esc(e.message[:600])} "
                           f"{_links_html(e.links)}</li>")
            out.append("</ul>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
