"""The leaderboard: submissions people can trust.

- `schema`: the strict pydantic schema of `submission.json`.
- `suite`: benchmark suites (which datasets, how many seeds, episodes and steps).
- `bundle`: build a submission bundle from run directories; read, pack and unpack bundles.
- `checksums`: the bundle's `SHA256SUMS` file.
- `rules`: the rules every submission must pass (each failure names the rule).
- `verify`: re-evaluate the submitted policies on fresh env seeds; flag inflated claims.
- `standings`: aggregates (IQM with intervals, per-dataset scores, profiles, P(improvement)),
  always recomputed from raw returns with `offrl.evaluation.stats`.
- `render`: the board as Markdown and (escaped) HTML.
- `board`: the static board in the repository's `leaderboard/` folder.
- `store`, `service`, `worker`: the web service (FastAPI, SQLAlchemy, verification worker).

Bundle layout (a folder, or the same as a zip archive for upload)::

    submission.json            the schema below
    configs/<dataset>.toml     each dataset's config.toml, exactly as run
    policies/<dataset>/seed_<n>.pt   TorchScript policies, observation normalisation inside
    SHA256SUMS                 "<sha256>  <path>" for every file above
    verification.json          written by `offrl leaderboard verify` (not covered by SHA256SUMS)
"""
