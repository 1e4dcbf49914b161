"""Run configs: `[algo]` (the algorithm's own dataclass) + `[training]` (`TrainingConfig`).

A config file is plain TOML with exactly these two tables, e.g. `baselines/iql/default.toml`:

    [algo]
    beta = 3.0
    expectile = 0.7

    [training]
    steps = 1_000_000
    normalize_reward = "return_range"

Keys left out take the dataclass defaults. Reading is strict: an unknown key or a value of the
wrong type raises `ConfigError` naming the file, the table and the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from offrl.algos.base import PRECISIONS
from offrl.errors import UserError

NORMALIZE_REWARD_MODES = ("none", "return_range")
TRANSITION_VIEWS = ("qlearning", "recorded")
SECTIONS = ("algo", "training")


class ConfigError(UserError, ValueError):
    """A config file or override is malformed. The message names the file, table and key."""


@dataclass
class TrainingConfig:
    """How the offline loop runs. The algorithm's hyperparameters live in its own config class.

    Steps are gradient steps per member (all members update together, one step each).
    """

    steps: int = 1_000_000
    """Gradient steps per member."""
    batch_size: int = 256
    """Transitions per member per gradient step."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One member per seed, trained side by side in one process."""
    eval_every: int = 5000
    """Gradient steps between evaluations; there is always one at the last step. 0: only then."""
    eval_episodes: int = 10
    """Episodes per member per evaluation (CORL: 10 on MuJoCo, 100 on AntMaze)."""
    eval_seed: int = 0
    """Base of the evaluation env seeds: episode e of member seed m at gradient step t resets
    its env with a seed derived from (eval_seed, t, m, e), distinct for every episode."""
    max_episode_steps: int = 0
    """Step limit of evaluation episodes; 0: the dataset card's (else the env's own)."""
    log_every: int = 1000
    """Gradient steps between metrics.csv rows (losses averaged over the interval)."""
    checkpoint_every: int = 50_000
    """Gradient steps between checkpoints/latest.pt writes; there is always one at the end."""
    keep_checkpoints: bool = False
    """Also keep checkpoints/step_<N>.pt at every checkpoint (latest.pt is always kept)."""
    normalize_states: bool = True
    """Standardise observations with the dataset's mean and std (as CORL)."""
    state_std_eps: float = 1e-3
    """Added to the per-dimension std so constant dimensions do not blow up."""
    normalize_reward: str = "none"
    """"none", or "return_range": r ← r × return_range_scale / (max − min episode return),
    CORL's IQL/CQL scaling on MuJoCo. Applied before reward_scale and reward_bias."""
    return_range_scale: float = 1000.0
    """The numerator of the "return_range" scaling (CORL: the 1000-step episode length)."""
    reward_scale: float = 1.0
    """r ← r × reward_scale + reward_bias after any normalisation (AntMaze IQL: bias −1)."""
    reward_bias: float = 0.0
    transitions: str = "qlearning"
    """"qlearning": D4RL's qlearning_dataset view (next obs = the following row; time-limit
    steps dropped), what CORL trains on. "recorded": every row with its recorded next
    observation (Minari-style data; falls back to "qlearning" when none was recorded)."""
    tensorboard: bool = True
    """Write TensorBoard events to tensorboard/ when the tensorboard package is installed."""
    precision: str = "fp32"
    """"fp32", or "bf16": the networks' matmuls, activations and gradients in bfloat16 against
    fp32 master weights and optimiser state (about 1.7x the updates/s of fp32 on a CPU with
    AVX512-BF16 or AMX). Results differ from fp32 beyond float rounding."""

    def validate(self, source: str = "<training config>") -> "TrainingConfig":
        def fail(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{source}: [training] {key} {problem}")

        for key in ("steps", "batch_size", "eval_episodes", "log_every", "checkpoint_every"):
            if getattr(self, key) <= 0:
                raise fail(key, f"must be positive; got {getattr(self, key)}")
        for key in ("eval_every", "max_episode_steps", "eval_seed"):
            if getattr(self, key) < 0:
                raise fail(key, f"must be 0 or positive; got {getattr(self, key)}")
        if not self.seeds:
            raise fail("seeds", "is empty; give at least one seed, e.g. [0]")
        if any(s < 0 for s in self.seeds):
            raise fail("seeds", f"must be non-negative integers; got {self.seeds}")
        if len(set(self.seeds)) != len(self.seeds):
            raise fail("seeds", f"has duplicates: {self.seeds}")
        if self.normalize_reward not in NORMALIZE_REWARD_MODES:
            raise fail("normalize_reward", f"is {self.normalize_reward!r}; expected one of "
                       f"{', '.join(map(repr, NORMALIZE_REWARD_MODES))}")
        if self.transitions not in TRANSITION_VIEWS:
            raise fail("transitions", f"is {self.transitions!r}; expected one of "
                       f"{', '.join(map(repr, TRANSITION_VIEWS))}")
        if self.precision not in PRECISIONS:
            raise fail("precision", f"is {self.precision!r}; expected one of "
                       f"{', '.join(map(repr, PRECISIONS))}")
        if not self.state_std_eps >= 0:
            raise fail("state_std_eps", f"must be 0 or positive; got {self.state_std_eps}")
        for key in ("return_range_scale", "reward_scale", "reward_bias"):
            if not math.isfinite(getattr(self, key)):
                raise fail(key, f"must be finite; got {getattr(self, key)}")
        return self


@dataclass
class RunConfig:
    """Everything that determines a run's numbers: the algorithm's config and the loop's."""

    algo_name: str
    algo: Any
    training: TrainingConfig

    def to_dict(self) -> dict[str, dict[str, Any]]:
        training = to_plain(self.training)
        if training.get("precision") == "fp32":
            # The default is left out, so every config written before the key existed keeps
            # its text and sha256 (sweeps skip complete jobs by that hash).
            del training["precision"]
        return {"algo": to_plain(self.algo), "training": training}

    def to_toml(self) -> str:
        """The config as a TOML file that `load_config` reads back to an equal RunConfig."""
        return dump_toml(self.to_dict())


# ---------------------------------------------------------------------------------- conversion
def to_plain(config: Any) -> dict[str, Any]:
    """A dataclass as TOML-able values (tuples become lists; None values are kept)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return to_plain(value)
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _toml_value(value: Any) -> str:
    """One TOML value on one line (lists inline), so configs print compactly."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """TOML text for {table: {key: value}}. TOML has no null: None values become comments."""
    parts = []
    for table, values in data.items():
        lines = [f"[{table}]"]
        for key, value in values.items():
            lines.append(f"# {key} is unset (None)" if value is None
                         else f"{key} = {_toml_value(value)}")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> Any:
    """`value` converted to type `tp`, or raise TypeError (the caller names file and key)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [_coerce(v, args[0]) for v in value] if len(args) == 1 or origin is list else (
            [_coerce(v, a) for v, a in zip(value, args, strict=True)] if args else list(value))
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TypeError
    return value


def dataclass_from_dict(cls: type, values: dict[str, Any], *, source: str, table: str,
                        base: Any = None) -> Any:
    """An instance of dataclass `cls` from `values`, strictly.

    Unknown keys and wrongly typed values raise ConfigError naming `source`, `[table]` and the
    key. Keys not given come from `base` (an instance) when given, else the class defaults.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{source}: [{table}] has unknown key {key!r}{hint} (known keys: "
                              f"{', '.join(fields)})")
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = _coerce(value, hints[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: [{table}] {key} = {value!r} has the wrong type; "
                              f"expected {_type_name(hints[key])}") from None
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
        raise ConfigError(f"{source}: [{table}] {exc}") from exc


# ---------------------------------------------------------------------------------- files
def read_config_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The {"algo": {...}, "training": {...}} tables of a config file (either may be absent)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown top-level key {key!r}; a config file has only "
                              "the tables [algo] and [training]")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key!r} must be a table ([{key}]); got "
                              f"{type(value).__name__}")
    return {k: dict(data.get(k, {})) for k in SECTIONS}


def build_config(algo_name: str, algo_config_class: type, tables: dict[str, dict[str, Any]], *,
                 source: str, training_overrides: dict[str, Any] | None = None,
                 algo_overrides: dict[str, Any] | None = None) -> RunConfig:
    """A checked RunConfig from config tables plus overrides (e.g. CLI flags), which win."""
    algo = dataclass_from_dict(algo_config_class, tables.get("algo", {}), source=source,
                               table="algo")
    training = dataclass_from_dict(TrainingConfig, tables.get("training", {}), source=source,
                                   table="training")
    if algo_overrides:
        algo = dataclass_from_dict(algo_config_class, algo_overrides, source="overrides",
                                   table="algo", base=algo)
    if training_overrides:
        training = dataclass_from_dict(TrainingConfig, training_overrides, source="overrides",
                                       table="training", base=training)
    training.validate(source)
    return RunConfig(algo_name=algo_name, algo=algo, training=training)


def load_config(algo_name: str, algo_config_class: type, path: str | os.PathLike | None, *,
                training_overrides: dict[str, Any] | None = None,
                algo_overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a config file (None: all defaults) and apply overrides; see `build_config`."""
    tables = read_config_file(path) if path is not None else {k: {} for k in SECTIONS}
    return build_config(algo_name, algo_config_class, tables,
                        source=str(path) if path is not None else "<defaults>",
                        training_overrides=training_overrides, algo_overrides=algo_overrides)


def baselines_dirs() -> list[Path]:
    """Folders holding `<algo>/<dataset>.toml` configs: $OFFRL_BASELINES, ./baselines, then the
    repo's baselines/ next to the offrl package (source checkouts and editable installs)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("OFFRL_BASELINES", "").split(os.pathsep)
            if p]
    dirs += [Path.cwd() / "baselines", Path(__file__).resolve().parents[2] / "baselines"]
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen and d.is_dir():
            seen.add(key)
            unique.append(d)
    return unique


def default_config_path(algo_name: str, dataset_id: str) -> Path | None:
    """baselines/<algo>/<dataset_id>.toml if it exists, else baselines/<algo>/default.toml,
    from the first folder of `baselines_dirs()` that has either; None if none has."""
    for d in baselines_dirs():
        for name in (f"{dataset_id.replace('/', '--')}.toml", "default.toml"):
            if (d / algo_name / name).is_file():
                return d / algo_name / name
    return None
