"""Derived datasets of a sweep's [conditions]: made before training, kept in the dataset cache.

    for step in derived_datasets(suite):    # dependency order, each id once
        ...                                 # step.id made from step.parent by step.make
    build_derived(derived_datasets(suite), device="cpu")

Each one is written where `offrl datasets hide-actions|label` writes it
(`$OFFRL_HOME/datasets/<id>/<id>.hdf5`, see `offrl.data.load.derived_dataset_path`), so the
CLI, `offrl train` and sweep jobs all load it by id. One that exists is reused; a labelled one
made with other IDM settings is an error rather than silently reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from offrl.errors import UserError
from offrl.sweeps.suite import HideActions, LabelActions, Suite


@dataclass(frozen=True)
class DerivedDataset:
    """Dataset `id`, made from dataset `parent` (a registered or derived id) by `make`."""

    id: str
    parent: str
    make: HideActions | LabelActions

    def describe(self) -> str:
        if isinstance(self.make, HideActions):
            return (f"hide-actions {self.parent} --fraction {self.make.fraction:g} --from "
                    f"{self.make.by} --seed {self.make.seed}")
        return f"label {self.parent} --idm-config {self.make.idm_config}"


def derived_datasets(suite: Suite, needed: set[str] | None = None) -> list[DerivedDataset]:
    """The derived datasets of the suite's conditions, parents before children, each once.

    needed: only those these dataset ids are made from (e.g. the ids of unfinished jobs)."""
    chains = []
    for source, condition in suite.dataset_conditions():
        if condition is None or not condition.steps:
            continue
        chain, parent = [], source
        for step in condition.steps:
            chain.append(DerivedDataset(step.dataset_id(parent), parent, step))
            parent = chain[-1].id
        if needed is None or parent in needed:
            chains.append(chain)
    seen, ordered = set(), []
    for chain in chains:
        for item in chain:
            if item.id not in seen:
                seen.add(item.id)
                ordered.append(item)
    return ordered


def _stored_metadata(path: Path) -> dict:
    """The metadata JSON of an offrl HDF5 file, without reading its arrays."""
    import h5py

    from offrl.data.hdf5 import METADATA_JSON_KEY

    with h5py.File(path, "r") as f:
        if METADATA_JSON_KEY not in f:
            return {}
        value = f[METADATA_JSON_KEY][()]
    return json.loads(value.decode() if isinstance(value, bytes) else value)


def _check_reusable(item: DerivedDataset, path: Path) -> None:
    """A labelled dataset in the cache must have been made with the suite's IDM settings."""
    if not isinstance(item.make, LabelActions):
        return  # a hide-actions id already names fraction, range and seed
    stored = _stored_metadata(path).get("labelling", {}).get("idm_config")
    if stored != item.make.idm:
        changed = sorted(k for k in item.make.idm if (stored or {}).get(k) != item.make.idm[k])
        raise UserError(f"{path} was labelled with other IDM settings than the suite asks for "
                        f"(differing: {', '.join(changed) or 'all'}); delete it to label again, "
                        "or give the suite the settings it was made with")


def build_derived(items: list[DerivedDataset], *, device: str | None = None,
                  progress: bool = True, print_fn: Callable[[str], None] = print) -> None:
    """Make every derived dataset not in the cache yet, in order; reuse those that are."""
    from offrl.data.hdf5 import write_hdf5
    from offrl.data.load import derived_dataset_path, load_any_dataset

    for number, item in enumerate(items, 1):
        path = derived_dataset_path(item.id)
        head = f"derived dataset {number}/{len(items)}: {item.id}"
        if path.is_file():
            _check_reusable(item, path)
            print_fn(f"{head}: reusing {path}")
            continue
        print_fn(f"{head}: making it ({item.describe()}) …")
        parent = load_any_dataset(item.parent, progress=progress)
        if isinstance(item.make, HideActions):
            from offrl.data.semi_supervised import hide_actions

            made = hide_actions(parent, item.make.fraction, by=item.make.by, seed=item.make.seed)
        else:
            import torch

            from offrl.data.labelling import IDMConfig, label_actions

            config = IDMConfig.from_dict(item.make.idm, source=str(item.make.idm_config))
            made = label_actions(parent, config, progress=progress,
                                 device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                                 log=print_fn if progress else None)
        if made.metadata["dataset_id"] != item.id:  # the library's naming and ours must agree
            raise AssertionError(f"made {made.metadata['dataset_id']!r}, expected {item.id!r}")
        write_hdf5(made, path)
        info = made.metadata.get("labelling", {})
        if info.get("heldout_mse") is not None:
            print_fn(f"{head}: {info['proxy_transitions']:,} proxy actions; IDM held-out action "
                     f"MSE {info['heldout_mse']:.4g} vs action variance "
                     f"{info['action_variance']:.4g} (R^2 {info['heldout_r2']:.3f})")
        print_fn(f"{head}: wrote {path}")
