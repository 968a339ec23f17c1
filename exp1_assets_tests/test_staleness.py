"""Staleness: code and data versions make Dagster flag exactly the assets whose inputs changed.

Every asset declares a `code_version` (a hash of the library files it runs, `code_versions.py`)
and returns a `DataVersion` (a hash of what it wrote). Dagster compares both with the provenance
each materialization recorded, so a downstream asset turns STALE when its upstream data or its
own code changed, and stays FRESH when a re-run produced the same bytes. These tests ask Dagster's
own resolver (the one behind the UI's "Stale" badges and `AutomationCondition.code_version_changed`)
against a real instance, after real FAST materializations of the data half of the graph.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, materialize
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory, StaleStatus
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime

from exp1_assets.definitions import defs
from exp1_assets.defs.store import ArtifactStore
from exp1_assets_tests.run_configs import fast_run_config, only
from exp1_assets_tests.test_graph import DATA, _assets

FRESH, STALE = StaleStatus.FRESH, StaleStatus.STALE


def _resolver(instance, assets: list) -> CachingStaleStatusResolver:
    """A fresh resolver (it caches per "request") over these asset definitions."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView

    graph = AssetGraph.from_assets(assets)
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def _statuses(instance, assets: list) -> dict[str, StaleStatus]:
    resolver = _resolver(instance, assets)
    return {a.key.to_user_string(): resolver.get_status(a.key) for a in assets}


def _rematerialize(instance, home: Path, asset, **config: int) -> str:
    """Materialize one asset definition alone; return the data version Dagster now holds for it."""
    run_config = {"ops": {asset.key.to_user_string(): {"config": config}}}
    result = materialize([asset], instance=instance, resources={"store": ArtifactStore(root=str(home))},
                         run_config=run_config)
    assert result.success
    return _resolver(instance, _assets(*DATA)).get_current_data_version(asset.key).value


def _raw_conversations(instance, home: Path, **config: int) -> str:
    return _rematerialize(instance, home, _assets("raw_conversations")[0], **{"builtin_size": 1500, **config})


def test_every_asset_declares_a_code_version() -> None:
    graph = defs.resolve_asset_graph()
    versions = {key.to_user_string(): graph.get(key).code_version for key in graph.materializable_asset_keys}
    assert len(versions) == 10
    assert all(isinstance(v, str) and len(v) == 16 for v in versions.values()), versions
    assert len(set(versions.values())) == 10  # each hashes its own files: no two assets share one


@pytest.fixture
def materialized(exp1_home: Path, dagster_instance) -> tuple[Path, object, str]:
    """The data half, materialized once with the FAST config; returns raw_conversations' version."""
    result = materialize(_assets(*DATA), instance=dagster_instance,
                         resources={"store": ArtifactStore(root=str(exp1_home))},
                         run_config=only(fast_run_config(), *DATA))
    assert result.success
    version = _resolver(dagster_instance, _assets(*DATA)).get_current_data_version(AssetKey("raw_conversations"))
    return exp1_home, dagster_instance, version.value


def test_data_and_code_changes_make_exactly_the_affected_assets_stale(materialized) -> None:
    """Dagster 1.13's staleness is one hop: an asset is STALE when its own code version or a direct
    parent's data version differs from what its last materialization recorded. Further downstream
    assets turn stale only once the stale one is re-materialized and its data actually changes."""
    home, instance, first_version = materialized
    data_assets = _assets(*DATA)
    splits = data_assets[DATA.index("conversation_splits")]

    # Just materialized: everything is fresh, and every data version is the asset's own content
    # hash (hex), not one Dagster made up from the run.
    assert _statuses(instance, data_assets) == dict.fromkeys(DATA, FRESH)
    resolver = _resolver(instance, data_assets)
    for name in DATA:
        version = resolver.get_current_data_version(AssetKey(name)).value
        assert len(version) in (16, 64) and int(version, 16) >= 0, (name, version)
    raw_event = instance.get_latest_materialization_event(AssetKey("raw_conversations"))
    assert raw_event.asset_materialization.metadata["data_version"].value == first_version
    splits_version = resolver.get_current_data_version(splits.key).value

    # A new code version of conversation_splits (as if data/splits.py were edited): that asset is
    # stale because of its code; its parent is not, and its children wait for its new data.
    edited = splits.map_asset_specs(lambda spec: spec.replace_attributes(code_version="edited-splits"))
    patched = [edited if a is splits else a for a in data_assets]
    assert _statuses(instance, patched) == {**dict.fromkeys(DATA, FRESH), "conversation_splits": STALE}
    [cause] = _resolver(instance, patched).get_stale_causes(splits.key)
    assert (cause.category, cause.reason) == (StaleCauseCategory.CODE, "has a new code version")
    assert _statuses(instance, data_assets) == dict.fromkeys(DATA, FRESH)  # the unedited code: fresh

    # Run the edited code: it writes the same splits (same data version), so the tokenizer is not
    # stale, and everything is fresh under the edited definitions...
    assert _rematerialize(instance, home, edited) == splits_version
    assert _statuses(instance, patched) == dict.fromkeys(DATA, FRESH)
    # ...while under the original definitions the code version differs again.
    assert _statuses(instance, data_assets) == {**dict.fromkeys(DATA, FRESH), "conversation_splits": STALE}
    assert _rematerialize(instance, home, splits) == splits_version
    assert _statuses(instance, data_assets) == dict.fromkeys(DATA, FRESH)

    # The same config again: a new materialization with the same bytes, hence the same data
    # version, so nothing downstream needs recomputing.
    assert _raw_conversations(instance, home) == first_version
    assert _statuses(instance, data_assets) == dict.fromkeys(DATA, FRESH)

    # A different seed: different conversations, a new data version, and the splits (built from
    # the old ones) are stale because of raw_conversations' data.
    reseeded = _raw_conversations(instance, home, seed=1)
    assert reseeded != first_version
    assert _statuses(instance, data_assets) == {**dict.fromkeys(DATA, FRESH), "conversation_splits": STALE}
    [cause] = _resolver(instance, data_assets).get_stale_causes(splits.key)
    assert (cause.category, cause.reason) == (StaleCauseCategory.DATA, "has a new dependency data version")
    assert cause.dependency_asset_key == AssetKey("raw_conversations")
    [child] = cause.children
    assert (child.asset_key, child.reason) == (AssetKey("raw_conversations"), "has a new data version")

    # Rebuilding the splits from the new conversations gives new splits: now the tokenizer is stale.
    assert _rematerialize(instance, home, splits) != splits_version
    assert _statuses(instance, data_assets) == {**dict.fromkeys(DATA, FRESH), "tokenizer": STALE}
    [cause] = _resolver(instance, data_assets).get_stale_causes(AssetKey("tokenizer"))
    assert cause.category == StaleCauseCategory.DATA
    assert cause.dependency_asset_key == AssetKey("conversation_splits")

    # A different corpus size: yet another version (the seed is not the only input that counts).
    resized = _raw_conversations(instance, home, seed=1, builtin_size=1400)
    assert resized not in (first_version, reseeded)


# --- code versions from the import graph ------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "exp1_assets"
VERSIONS_OF_DEFS = ("import json, exp1_assets; from exp1_assets.definitions import defs; g = defs.resolve_asset_graph(); "
                    "print(json.dumps({'__file__': exp1_assets.__file__, "
                    "**{k.to_user_string(): g.get(k).code_version for k in g.materializable_asset_keys}}))")


def _code_versions_before_and_after_editing(tmp_path: Path, module: str) -> tuple[dict[str, str], dict[str, str]]:
    """Code versions that the definitions of a copy of the package declare, before and after
    `module` is edited (a comment appended: only the source changes)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(PACKAGE, copy / "exp1_assets", ignore=shutil.ignore_patterns("__pycache__"))
    before = _declared_code_versions(copy)
    edited = copy / "exp1_assets" / module
    edited.write_text(edited.read_text() + "\n# an edit that changes nothing but the source\n")
    return before, _declared_code_versions(copy)


def _declared_code_versions(root: Path) -> dict[str, str]:
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", VERSIONS_OF_DEFS], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(versions.pop("__file__")).is_relative_to(root)  # the copy's code, not the checkout's
    return versions


def _materialized_at(instance, versions: dict[str, str], *names: str) -> None:
    """Record a materialization of each asset's `tiny` partition as a run of code `versions` would:
    its code version, its data version and the (initial) data versions of its inputs."""
    from dagster import AssetMaterialization
    from dagster._core.definitions.data_version import (
        CODE_VERSION_TAG, DATA_VERSION_TAG, DEFAULT_DATA_VERSION, INPUT_DATA_VERSION_TAG_PREFIX,
        INPUT_EVENT_POINTER_TAG_PREFIX, NULL_EVENT_POINTER,
    )

    graph = defs.resolve_asset_graph()
    for name in names:
        inputs = {}
        for parent in graph.get(AssetKey(name)).parent_keys:  # never materialized: the initial version
            inputs[f"{INPUT_DATA_VERSION_TAG_PREFIX}/{parent.to_user_string()}"] = DEFAULT_DATA_VERSION.value
            inputs[f"{INPUT_EVENT_POINTER_TAG_PREFIX}/{parent.to_user_string()}"] = NULL_EVENT_POINTER
        instance.report_runless_asset_event(AssetMaterialization(
            asset_key=name, partition="tiny",
            tags={CODE_VERSION_TAG: versions[name], DATA_VERSION_TAG: f"{name}-v1", **inputs}))


@pytest.mark.parametrize(("module", "stale", "fresh"), [
    # The decode loop: imported by the evaluation and sample jobs only (it was missing from the old lists).
    ("evaluation/decoding.py", {"evaluation_report", "sample_set"}, {"model_checkpoint", "size_comparison"}),
    # The fault hooks: imported by the training job only.
    ("training/faults.py", {"model_checkpoint"}, {"evaluation_report", "sample_set", "packed_dataset"}),
])
def test_editing_a_module_makes_stale_exactly_the_assets_whose_jobs_import_it(
        tmp_path: Path, dagster_instance, module: str, stale: set[str], fresh: set[str]) -> None:
    current, edited = _code_versions_before_and_after_editing(tmp_path, module)
    assert {name for name in current if edited[name] != current[name]} == stale

    # What Dagster's resolver (the UI's "Stale" badge) says of the partitioned assets once the edited
    # code is deployed, after materializations made by the current code.
    partitioned = ["model_checkpoint", "evaluation_report", "sample_set"]
    _materialized_at(dagster_instance, current, *partitioned)
    assets = [a.map_asset_specs(lambda spec: spec.replace_attributes(code_version=edited[spec.key.to_user_string()]))
              for a in _assets(*partitioned)]
    resolver = _resolver(dagster_instance, assets)
    statuses = {name: resolver.get_status(AssetKey(name), "tiny") for name in partitioned}
    causes = {name: resolver.get_stale_causes(AssetKey(name), "tiny") for name in partitioned}
    assert statuses == {name: STALE if name in stale else FRESH for name in partitioned}, causes
    for name in stale & set(partitioned):
        [cause] = resolver.get_stale_causes(AssetKey(name), "tiny")
        assert (cause.category, cause.reason) == (StaleCauseCategory.CODE, "has a new code version")
