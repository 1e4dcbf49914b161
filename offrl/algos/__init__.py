"""Offline RL agents that train several seeds in one process.

`get_algorithm(name)` returns the agent class; every class has `config_class` (its
hyperparameter dataclass, CORL's defaults) and is built as
`AgentClass(config, observation_dim, action_dim, seeds, device="cpu", max_action=1.0)`.
An algorithm module registers itself by adding its class to `ALGORITHMS` here.
"""

from __future__ import annotations

from offrl.algos.base import Agent, Batch, derive_seed, member_generators
from offrl.algos.cal_ql import CalQL, CalQLConfig
from offrl.algos.cql import CQL, CQLConfig
from offrl.algos.iql import IQL, IQLConfig
from offrl.algos.sampler import TransitionSampler
from offrl.algos.td3_bc import TD3BC, TD3BCConfig
from offrl.errors import UserError

__all__ = ["ALGORITHMS", "Agent", "Batch", "CQL", "CalQL", "CalQLConfig", "CQLConfig", "IQL", "IQLConfig", "TD3BC", "TD3BCConfig",
           "TransitionSampler", "UnknownAlgorithmError", "derive_seed", "get_algorithm",
           "member_generators"]

ALGORITHMS: dict[str, type[Agent]] = {
    TD3BC.name: TD3BC,
    IQL.name: IQL,
    CQL.name: CQL,
    CalQL.name: CalQL,
}


class UnknownAlgorithmError(UserError, ValueError):
    """No algorithm is registered under that name."""


def get_algorithm(name: str) -> type[Agent]:
    """The agent class registered as `name` (e.g. "td3_bc", "iql")."""
    key = str(name).strip().lower().replace("-", "_")
    try:
        return ALGORITHMS[key]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}") from None
