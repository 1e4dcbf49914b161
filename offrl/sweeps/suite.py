"""Benchmark suites: which datasets, algorithms (with their configs), seeds and budget make up
one benchmark. A suite is a TOML file in `evaluation/suites/`, e.g. `quick.toml`:

    [suite]
    name = "quick"                      # optional; default: the file's stem
    description = "Small datasets, short training."
    datasets = ["hopper-random-10k-v0", "walker2d-random-10k-v0"]
    seeds = [0, 1, 2]

    [training]                          # overrides for every algorithm (TrainingConfig keys)
    steps = 3000
    eval_every = 1500

    [algorithms.td3_bc]                 # one table per algorithm; it may be empty
    [algorithms.iql]
    config = "baselines/iql/default.toml"   # one config file for every dataset
    [algorithms.cql]
    configs = { "hopper-random-10k-v0" = "my-cql.toml" }   # per dataset (else the default)
    [algorithms.cql.training]           # overrides for this algorithm only (win over [training])
    steps = 500
    [algorithms.cql.algo]               # algorithm hyperparameter overrides
    critic_hidden_dims = [256, 256]

    [report]                            # the `offrl report` written at the end of a sweep
    reps = 10000
    figures = true

    [protocol]                          # free-form record of the protocol (strings, numbers)
    used = "reduced"                    # if given: "standard" or the name of a variant

    [variants.reduced]                  # a named variant: `offrl sweep SUITE --variant reduced`
    seeds = [0, 1, 2]                   # it may replace seeds, datasets, description, and
    [variants.reduced.training]         # merge over [training], [algorithms.*], [report] and
    steps = 100_000                     # [conditions.*]

Conditions (optional; the semi-supervised benchmark): every dataset is trained in every
condition. A condition with no steps is the dataset as listed; `hide_actions` and `label` make
a derived dataset (`offrl datasets hide-actions` / `label`, applied in that order) that the
sweep builds before training, into the dataset cache, reusing one that is already there:

    [conditions.all-actions]            # the dataset itself: <id>
    [conditions.labelled-10pct]         # <id>-labelled10-lowest50-s0
    hide_actions = { fraction = 0.1, from = "lowest-50%", seed = 0 }  # from, seed: optional
    [conditions.labelled-proxy]         # <id>-labelled10-lowest50-s0-idm
    hide_actions = { fraction = 0.1, from = "lowest-50%", seed = 0 }
    label = { idm_config = "baselines/idm/default.toml", idm = { max_steps = 50_000 } }
                                        # idm: optional overrides of the file's [idm] table

Each condition's dataset id is distinct, so the report shows the conditions side by side (one
row per dataset id). Jobs on a derived dataset use the config of the dataset it was made
from, and their config hash covers the derivation, so a changed condition is not mixed into
old runs.

Configs: without `config`/`configs`, each (algorithm, dataset) uses the config `offrl train`
would (`baselines/<algo>/<dataset>.toml`, else `baselines/<algo>/default.toml`). Relative
config paths are looked up next to the suite file, then (for `baselines/…` paths) in the
baselines folders. Seeds come only from `[suite] seeds`.

Loading is strict: an unknown key, a value of the wrong type, an unknown algorithm or a bad
condition (fraction, range, IDM setting) raises `SuiteError` naming the file and the key.
Dataset cards are not needed to load a suite (they are checked when a sweep starts), so a suite
may name datasets whose cards are still to come.
"""

from __future__ import annotations

import copy
import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offrl.errors import UserError

SUITES_ENV_VAR = "OFFRL_SUITES"
SUITE_KEYS = ("name", "description", "datasets", "seeds")
TOP_LEVEL_KEYS = ("suite", "training", "algorithms", "report", "protocol", "conditions",
                  "variants")
ALGORITHM_KEYS = ("config", "configs", "training", "algo")
REPORT_KEYS = ("reps", "figures")
VARIANT_KEYS = ("description", "datasets", "seeds", "training", "algorithms", "report",
                "conditions")
CONDITION_KEYS = ("hide_actions", "label")
HIDE_ACTIONS_KEYS = ("fraction", "from", "seed")
LABEL_KEYS = ("idm_config", "idm")


class SuiteError(UserError, ValueError):
    """A suite file is malformed. The message names the file and the key."""


@dataclass(frozen=True)
class AlgorithmEntry:
    """One algorithm of a suite: where its configs come from and what the suite overrides."""

    name: str
    config: Path | None = None
    """One config file for every dataset; None: the per-dataset default lookup."""
    configs: dict[str, Path] = field(default_factory=dict)
    """Config files for particular datasets (win over `config`)."""
    training: dict[str, Any] = field(default_factory=dict)
    """[training] overrides for this algorithm (merged over the suite's [training])."""
    algo: dict[str, Any] = field(default_factory=dict)
    """[algo] overrides (the algorithm's hyperparameters)."""

    def config_for(self, dataset: str) -> Path | None:
        return self.configs.get(dataset, self.config)


@dataclass(frozen=True)
class HideActions:
    """Keep the actions of `fraction` of the trajectories, drawn from `by` (hide the rest)."""

    fraction: float
    by: str = "lowest-50%"
    seed: int = 0

    def dataset_id(self, source: str) -> str:
        from offrl.data.semi_supervised import split_id

        return split_id(source, self.fraction, self.by, self.seed)

    def recipe(self) -> dict[str, Any]:
        return {"hide_actions": {"fraction": self.fraction, "from": self.by, "seed": self.seed}}


@dataclass(frozen=True)
class LabelActions:
    """Fill missing actions with an inverse dynamics model trained with `idm` (IDMConfig)."""

    idm_config: Path
    """The IDM config file named in the suite (for the record)."""
    idm: dict[str, Any]
    """The resolved IDM settings: the file's [idm] table with the suite's overrides."""

    def dataset_id(self, source: str) -> str:
        return f"{source}-idm"  # as offrl.data.labelling.label_actions names it

    def recipe(self) -> dict[str, Any]:
        return {"label": {"idm": self.idm}}


@dataclass(frozen=True)
class Condition:
    """One form every dataset is trained in: as listed, or derived by its steps in order."""

    name: str
    steps: tuple[HideActions | LabelActions, ...] = ()

    def dataset_id(self, source: str) -> str:
        """The id jobs train on for [suite] dataset `source`."""
        for step in self.steps:
            source = step.dataset_id(source)
        return source

    def recipe(self) -> list[dict[str, Any]]:
        """The steps as plain values (hashed into the jobs' config hash)."""
        return [step.recipe() for step in self.steps]


@dataclass(frozen=True)
class ReportOptions:
    """How the report at the end of a sweep is built (see `offrl report`)."""

    reps: int = 10_000
    figures: bool = True


@dataclass(frozen=True)
class Suite:
    """A benchmark: every algorithm × dataset × seed, trained with the given overrides."""

    name: str
    path: Path
    description: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    algorithms: tuple[AlgorithmEntry, ...]
    training: dict[str, Any]
    report: ReportOptions
    protocol: dict[str, Any]
    conditions: tuple[Condition, ...] = ()
    """Empty: each dataset is trained as listed."""
    variant: str | None = None
    variants: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """`name`, or `name:variant` for a variant."""
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def training_overrides(self, algorithm: AlgorithmEntry) -> dict[str, Any]:
        """The suite's [training] overrides for `algorithm`, seeds included."""
        return {**self.training, **algorithm.training, "seeds": list(self.seeds)}

    def dataset_conditions(self) -> list[tuple[str, Condition | None]]:
        """Every ([suite] dataset, condition) pair, datasets first; condition None when the
        suite has no [conditions]."""
        return [(d, c) for d in self.datasets for c in (self.conditions or (None,))]


# ---------------------------------------------------------------------------------- finding
def suites_dirs() -> list[Path]:
    """Folders holding suite files: $OFFRL_SUITES, ./evaluation/suites, then the repo's
    evaluation/suites next to the offrl package (source checkouts and editable installs)."""
    dirs = [Path(p).expanduser() for p in os.environ.get(SUITES_ENV_VAR, "").split(os.pathsep)
            if p]
    dirs += [Path.cwd() / "evaluation" / "suites",
             Path(__file__).resolve().parents[2] / "evaluation" / "suites"]
    seen, unique = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            unique.append(d)
    return unique


def available_suites() -> list[str]:
    return sorted({p.stem for d in suites_dirs() for p in d.glob("*.toml")})


def find_suite(name_or_path: str | os.PathLike) -> Path:
    """A suite file: an existing path as given, else `<name>.toml` in the suites folders."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.suffix != ".toml" and len(path.parts) == 1:
        for d in suites_dirs():
            if (d / f"{path.name}.toml").is_file():
                return d / f"{path.name}.toml"
    known = available_suites()
    close = difflib.get_close_matches(str(name_or_path), known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise SuiteError(f"no suite {str(name_or_path)!r}: not a file, and not a name in "
                     f"{', '.join(map(str, suites_dirs())) or 'any suites folder'}{hint} "
                     f"(known suites: {', '.join(known) or 'none'})")


# ---------------------------------------------------------------------------------- parsing
def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` merged into a copy of `base`: tables merge recursively, other values replace."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Checker:
    """Type checks that raise SuiteError naming the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> SuiteError:
        return SuiteError(f"{self.path}: {where} {problem}")

    def table(self, value: Any, where: str, allowed: tuple[str, ...] | None = None
              ) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table; got {type(value).__name__} {value!r}")
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    close = difflib.get_close_matches(key, allowed, n=2, cutoff=0.6)
                    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                    raise self.fail(where, f"has unknown key {key!r}{hint} (known keys: "
                                           f"{', '.join(allowed)})")
        return dict(value)

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"must be a non-empty string; got {value!r}")
        return value

    def string_list(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) and v.strip() for v in value):
            raise self.fail(where, f"must be a non-empty list of strings; got {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(where, f"has duplicates: {value}")
        return tuple(value)

    def seed_list(self, value: Any, where: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise self.fail(where, f"must be a non-empty list of non-negative integers, e.g. "
                                   f"[0, 1, 2]; got {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(where, f"has duplicates: {value}")
        return tuple(value)


def _resolve_config_path(text: str, suite_path: Path) -> Path:
    """A config path from a suite: absolute, next to the suite file, or in a baselines folder."""
    from offrl.training.config import baselines_dirs

    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    candidates = [suite_path.parent / path]
    if path.parts and path.parts[0] == "baselines":
        candidates += [d / Path(*path.parts[1:]) for d in baselines_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SuiteError(f"{suite_path}: config file {text!r} not found (looked in "
                     f"{', '.join(str(c) for c in candidates)})")


def _check_overrides(check: _Checker, cls: type, values: dict[str, Any], where: str) -> None:
    """Validate override keys and types against a config dataclass, naming the suite file."""
    from offrl.training.config import ConfigError, dataclass_from_dict

    try:
        dataclass_from_dict(cls, values, source=str(check.path), table=where)
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None


def _parse_algorithm(check: _Checker, name: str, raw: Any) -> AlgorithmEntry:
    from offrl.algos import UnknownAlgorithmError, get_algorithm
    from offrl.training.config import TrainingConfig

    where = f"[algorithms.{name}]"
    try:
        agent_cls = get_algorithm(name)
    except UnknownAlgorithmError as exc:
        raise check.fail(where, f"names an {exc}") from None
    table = check.table(raw, where, ALGORITHM_KEYS)
    config = None
    if "config" in table:
        config = _resolve_config_path(check.string(table["config"], f"{where} config"),
                                      check.path)
    configs = {}
    for dataset, text in check.table(table.get("configs"), f"{where} configs").items():
        configs[dataset] = _resolve_config_path(
            check.string(text, f"{where} configs.{dataset}"), check.path)
    training = check.table(table.get("training"), f"[algorithms.{name}.training]")
    if "seeds" in training:
        raise check.fail(f"[algorithms.{name}.training]", "sets seeds; seeds are set for the "
                                                          "whole suite in [suite] seeds")
    _check_overrides(check, TrainingConfig, training, f"algorithms.{name}.training")
    algo = check.table(table.get("algo"), f"[algorithms.{name}.algo]")
    _check_overrides(check, agent_cls.config_class, algo, f"algorithms.{name}.algo")
    return AlgorithmEntry(name=agent_cls.name, config=config, configs=configs,
                          training=training, algo=algo)


def _parse_hide_actions(check: _Checker, raw: Any, where: str) -> HideActions:
    from offrl.data.dataset import DatasetError
    from offrl.data.semi_supervised import parse_split_spec

    table = check.table(raw, where, HIDE_ACTIONS_KEYS)
    fraction = table.get("fraction")
    if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
            or not 0 < fraction <= 1):
        raise check.fail(f"{where} fraction", f"must be a number in (0, 1] (a fraction of all "
                                              f"trajectories); got {fraction!r}")
    by = check.string(table.get("from", HideActions.by), f"{where} from")
    try:
        parse_split_spec(by)
    except DatasetError as exc:
        raise check.fail(f"{where} from", f"is not a range: {exc}") from None
    seed = table.get("seed", HideActions.seed)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise check.fail(f"{where} seed", f"must be a non-negative integer; got {seed!r}")
    return HideActions(fraction=float(fraction), by=by, seed=seed)


def _parse_label(check: _Checker, raw: Any, where: str) -> LabelActions:
    from offrl.data.labelling import IDMConfig, IDMConfigError

    table = check.table(raw, where, LABEL_KEYS)
    if "idm_config" not in table:
        raise check.fail(where, "has no 'idm_config'; e.g. idm_config = "
                                "\"baselines/idm/default.toml\"")
    text = check.string(table["idm_config"], f"{where} idm_config")
    try:
        path = _resolve_config_path(text, check.path)
    except SuiteError as exc:
        raise check.fail(f"{where} idm_config", "names no file: " + str(exc).removeprefix(
            f"{check.path}: config file ")) from None
    overrides = check.table(table.get("idm"), f"{where} idm")
    try:
        base = IDMConfig.from_toml(path).to_dict()
        config = IDMConfig.from_dict({**base, **overrides}, source=f"{check.path}: {where}")
    except IDMConfigError as exc:
        raise SuiteError(str(exc)) from None
    return LabelActions(idm_config=path, idm=config.to_dict())


def _parse_conditions(check: _Checker, raw: Any) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    table = check.table(raw, "[conditions]")
    if not table:
        raise check.fail("[conditions]", "is empty; add e.g. [conditions.all-actions] (or leave "
                                         "[conditions] out to train each dataset as listed)")
    conditions, ids = [], {}
    for name, entry in table.items():
        where = f"[conditions.{name}]"
        entry = check.table(entry, where, CONDITION_KEYS)
        steps: list[HideActions | LabelActions] = []
        if "hide_actions" in entry:
            steps.append(_parse_hide_actions(check, entry["hide_actions"], f"{where} hide_actions"))
        if "label" in entry:
            steps.append(_parse_label(check, entry["label"], f"{where} label"))
        condition = Condition(name=name, steps=tuple(steps))
        same = ids.setdefault(condition.dataset_id("<id>"), name)
        if same != name:
            raise check.fail(where, f"makes the same dataset as [conditions.{same}]")
        conditions.append(condition)
    return tuple(conditions)


def parse_suite(data: dict[str, Any], path: Path, variant: str | None = None) -> Suite:
    """A Suite from a suite file's TOML tables (see the module docstring)."""
    from offrl.training.config import TrainingConfig

    check = _Checker(path)
    check.table(data, "the file", TOP_LEVEL_KEYS)
    variants = check.table(data.get("variants"), "[variants]")
    for name, table in variants.items():
        check.table(table, f"[variants.{name}]", VARIANT_KEYS)
    if variant is not None:
        if variant not in variants:
            raise check.fail("[variants]", f"has no variant {variant!r} (variants: "
                                           f"{', '.join(variants) or 'none'})")
        chosen = variants[variant]
        data = _merge(data, {"suite": {k: chosen[k] for k in ("description", "datasets",
                                                              "seeds") if k in chosen},
                             **{k: chosen[k] for k in ("training", "algorithms", "report",
                                                       "conditions") if k in chosen}})

    suite = check.table(data.get("suite"), "[suite]", SUITE_KEYS)
    for key in ("datasets", "seeds"):
        if key not in suite:
            raise check.fail("[suite]", f"has no {key!r}; a suite lists its datasets and seeds")
    name = check.string(suite.get("name", path.stem), "[suite] name")
    description = suite.get("description", "")
    if not isinstance(description, str):
        raise check.fail("[suite] description", f"must be a string; got {description!r}")
    datasets = check.string_list(suite["datasets"], "[suite] datasets")
    seeds = check.seed_list(suite["seeds"], "[suite] seeds")

    training = check.table(data.get("training"), "[training]")
    if "seeds" in training:
        raise check.fail("[training]", "sets seeds; give them as [suite] seeds")
    _check_overrides(check, TrainingConfig, training, "training")

    algorithms_table = check.table(data.get("algorithms"), "[algorithms]")
    if not algorithms_table:
        raise check.fail("[algorithms]", "is missing or empty; add e.g. [algorithms.td3_bc]")
    algorithms = tuple(_parse_algorithm(check, n, t) for n, t in algorithms_table.items())
    names = [a.name for a in algorithms]
    if len(set(names)) != len(names):
        raise check.fail("[algorithms]", f"names an algorithm twice: {names}")
    for entry in algorithms:
        unknown = sorted(set(entry.configs) - set(datasets))
        if unknown:
            raise check.fail(f"[algorithms.{entry.name}] configs",
                             f"names datasets not in [suite] datasets: {', '.join(unknown)}")

    report_table = check.table(data.get("report"), "[report]", REPORT_KEYS)
    reps = report_table.get("reps", ReportOptions.reps)
    if not isinstance(reps, int) or isinstance(reps, bool) or reps <= 0:
        raise check.fail("[report] reps", f"must be a positive integer; got {reps!r}")
    figures = report_table.get("figures", ReportOptions.figures)
    if not isinstance(figures, bool):
        raise check.fail("[report] figures", f"must be true or false; got {figures!r}")

    protocol = check.table(data.get("protocol"), "[protocol]")
    used = protocol.get("used")
    if used is not None and used != "standard" and used not in variants:
        raise check.fail("[protocol] used", f"is {used!r}; expected \"standard\" or a variant "
                                            f"({', '.join(variants) or 'none defined'})")

    conditions = _parse_conditions(check, data.get("conditions"))

    return Suite(name=name, path=path, description=description, datasets=datasets,
                 seeds=seeds, algorithms=algorithms, training=training,
                 report=ReportOptions(reps=reps, figures=figures), protocol=protocol,
                 conditions=conditions, variant=variant, variants=tuple(variants))


def load_suite(name_or_path: str | os.PathLike, variant: str | None = None) -> Suite:
    """Read a suite by name (`quick`, looked up in `suites_dirs()`) or path; strictly checked.

    `variant`: apply `[variants.<variant>]` over the suite (e.g. a reduced budget)."""
    path = find_suite(name_or_path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SuiteError(f"suite file {path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite file {path}: not valid TOML: {exc}") from exc
    return parse_suite(data, path, variant)
