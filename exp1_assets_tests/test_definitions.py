"""The definitions load, the graph has its shape, and the layers keep their boundaries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, Definitions

PACKAGE = Path(__file__).resolve().parents[1] / "exp1_assets"
EXPECTED_GROUPS = {
    "raw_conversations": "data", "conversation_splits": "data", "tokenizer": "data", "packed_dataset": "data",
    "model_checkpoint": "training", "evaluation_report": "evaluation", "sample_set": "evaluation",
    "benchmark_report": "evaluation", "report_card": "reporting", "size_comparison": "reporting",
}


def test_definitions_load_and_validate() -> None:
    from exp1_assets.definitions import defs

    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_GROUPS)
    for name, group in EXPECTED_GROUPS.items():
        assert graph.get(AssetKey(name)).group_name == group


def test_partitioned_assets_use_the_size_registry() -> None:
    from exp1_assets.definitions import defs
    from exp1_assets.sizes import SIZES

    graph = defs.resolve_asset_graph()
    for name in ("model_checkpoint", "evaluation_report", "sample_set", "benchmark_report", "report_card"):
        node = graph.get(AssetKey(name))
        assert node.partitions_def is not None
        assert node.partitions_def.get_partition_keys() == list(SIZES) == [
            "tiny", "125M", "350M", "500M", "1B", "1.5B", "ladder-1M", "ladder-2.5M", "ladder-16M"]
        # Launched jobs queue on the gpu pool; the report card only reads JSON files.
        assert node.pools == ({"gpu"} if name != "report_card" else set())
    assert graph.get(AssetKey("size_comparison")).partitions_def is None


def test_checks_are_declared() -> None:
    from exp1_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("raw_conversations", "quarantine_rate_ok"), ("conversation_splits", "no_split_overlap"),
        ("tokenizer", "tokenizer_roundtrip"), ("packed_dataset", "blocks_well_formed"),
        ("model_checkpoint", "loss_finite"), ("model_checkpoint", "validation_loss_decreased"),
        ("evaluation_report", "perplexity_below_threshold"), ("evaluation_report", "rouge_l_above_threshold"),
        ("benchmark_report", "benchmarks_above_chance"),
    }
    # The checks of size-partitioned assets are partitioned by size too, so each size keeps its own
    # results; the others have no partitions.
    from exp1_assets.defs.partitions import size_partitions

    partitioned = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys
                   if graph.get(k).partitions_def == size_partitions}
    assert partitioned == {
        ("model_checkpoint", "loss_finite"), ("model_checkpoint", "validation_loss_decreased"),
        ("evaluation_report", "perplexity_below_threshold"), ("evaluation_report", "rouge_l_above_threshold"),
        ("benchmark_report", "benchmarks_above_chance"),
    }
    assert all(graph.get(k).partitions_def is None for k in graph.asset_check_keys
               if (k.asset_key.to_user_string(), k.name) not in partitioned)


def test_code_server_import_stays_light() -> None:
    """Loading the definitions must not import torch/transformers/datasets: every UI reload does it."""
    code = ("import sys, exp1_assets.definitions; "
            "print(sorted(m for m in ('torch','transformers','datasets','pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_layers_never_import_dagster() -> None:
    """Everything outside defs/ and definitions.py is plain Python (the jobs import only dagster_pipes)."""
    files = [p for p in PACKAGE.rglob("*.py") if "defs" not in p.relative_to(PACKAGE).parts
             and p.name != "definitions.py"]
    assert {"launch/local.py", "launch/slurm.py", "launch/follow.py", "launch/errors.py", "storage.py",
            "settings.py", "code_versions.py", "data/specs.py", "evaluation/thresholds.py"} <= {
        str(p.relative_to(PACKAGE)) for p in files}
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imported_modules(p) if m == "dagster" or m.startswith("dagster."))
        for p in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_defs_holds_only_dagster_code() -> None:
    """Each module of the Dagster layer imports dagster: plain helpers belong in the library."""
    modules = [p for p in (PACKAGE / "defs").glob("*.py") if p.name != "__init__.py"]
    assert len(modules) >= 8
    plain = sorted(p.name for p in modules if not any(m == "dagster" or m.startswith("dagster.")
                                                      for m in _imported_modules(p)))
    assert plain == []


def test_the_layering_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom dagster import asset\n")
    assert "dagster" in _imported_modules(bad)


def test_training_retries_come_from_the_one_settings_module(monkeypatch) -> None:
    import pytest

    from exp1_assets.defs.training_assets import model_checkpoint
    from exp1_assets.settings import Settings

    assert model_checkpoint.op.retry_policy.max_retries == Settings.from_environ().train_retries == 1
    # conftest shortens the wait before a retry (default 5 s) so that the kill/resume tests spend no idle time
    assert model_checkpoint.op.retry_policy.delay == Settings.from_environ().train_retry_delay_s == 0.5
    assert Settings.from_environ({}).train_retry_delay_s == 5.0
    monkeypatch.setenv("EXP1_TRAIN_RETRIES", "3")
    assert Settings.from_environ().train_retries == 3
    monkeypatch.setenv("EXP1_TRAIN_RETRIES", "-1")
    with pytest.raises(ValueError, match="EXP1_TRAIN_RETRIES"):
        Settings.from_environ()
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(ValueError, match="EXP1_TRAIN_RETRY_DELAY_S"):
            Settings.from_environ({"EXP1_TRAIN_RETRY_DELAY_S": bad})


def test_environment_knobs_are_read_only_in_the_settings_module() -> None:
    """EXP1_* variables are named in one module; everything else takes them as arguments."""
    readers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if "EXP1_" in p.read_text() and p.name != "settings.py"
                     and ("os.environ" in p.read_text() or "getenv" in p.read_text()))
    assert readers == []
    fault_vars = [p.name for p in PACKAGE.rglob("*.py") if "EXP1_FAULT" in p.read_text() or "EXP1_HANG" in p.read_text()
                  or "EXP1_KILL" in p.read_text()]
    assert fault_vars == []


def test_every_config_field_is_described_and_unset_means_none() -> None:
    """Run config and resources: a description on every field, and no 0 / -1 / "" "not set" sentinels
    (a field that can be left unset is None until set; the library's specs own the defaults)."""
    import inspect

    from dagster import Config, ConfigurableResource

    from exp1_assets_tests.run_configs import defs_modules

    classes = {cls for module in defs_modules()
               for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, (Config, ConfigurableResource)) and cls not in (Config, ConfigurableResource)
               and cls.__module__.startswith("exp1_assets.")}
    assert len(classes) >= 9
    for cls in classes:
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"
            assert field.default not in ("", -1) and not (field.default == 0 and field.default is not False
                                                          and name not in ("gpus_per_node",)), (
                f"{cls.__name__}.{name} defaults to the sentinel {field.default!r}")
