"""Every command the README shows works with the installed Dagster, or a named test runs it.

The README's fenced bash blocks (and the `dagster ... -m exp1_assets.definitions` commands quoted
in its prose) are parsed, not copied: a command added to or changed in the README without a test
here fails `test_every_readme_command_is_exercised`. The cheap ones run for real against a temp
DAGSTER_HOME (a copy of scripts/dagster.yaml, as `make home` makes) and a temp EXP1_HOME; the
expensive ones (training) are run by the tests named in COVERED_BY, and here only their selection
strings go through `dagster asset list`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exp1_assets_tests.dagster_dev import BIN, REPO, dev_env, make_dagster_home
from exp1_assets_tests.run_configs import fast_run_config, only

README = REPO / "README.md"
TESTS = Path(__file__).resolve().parent
DATA = ["conversation_splits", "packed_dataset", "raw_conversations", "tokenizer"]
ALL = sorted([*DATA, "model_checkpoint", "evaluation_report", "sample_set", "benchmark_report", "report_card",
              "size_comparison"])
SIZES = ["tiny", "125M", "350M", "500M", "1B", "1.5B", "ladder-1M", "ladder-2.5M", "ladder-16M"]
MATERIALIZE = "dagster asset materialize -m exp1_assets.definitions --select"

# README command -> the tests that run it ("file::test"; a bare name is in this file).
COVERED_BY: dict[str, list[str]] = {
    "make run": ["test_make_prints_the_commands_the_readme_promises",
                 "test_cli_and_schedules.py::test_cli_materializes_the_whole_graph_into_dagster_home"],
    "make test": ["test_make_prints_the_commands_the_readme_promises"],
    "make ladder": ["test_sizes.py::test_make_ladder_materializes_the_data_once_then_each_ladder_size_and_tiny"],
    "make chat SIZE=tiny": ["test_chat.py::test_two_turns_through_make_chat_stream_what_generate_gives",
                            "test_chat.py::test_make_chat_without_a_checkpoint_says_to_run_make_run"],
    "make dev": ["test_make_prints_the_commands_the_readme_promises",
                 "test_ui_browser.py::test_whole_graph_run_materializes_every_asset"],
    "export DAGSTER_HOME=$PWD/.dagster_home EXP1_HOME=$PWD/.exp1_home":
        ["test_make_prints_the_commands_the_readme_promises"],
    f"{MATERIALIZE} * --partition tiny":
        ["test_cli_and_schedules.py::test_cli_materializes_the_whole_graph_into_dagster_home",
         "test_cli_and_schedules.py::test_cli_star_selection_is_the_whole_graph",
         "test_readme_selections_are_accepted_by_the_cli"],
    f"{MATERIALIZE} group:data": ["test_materialize_the_data_half", "test_readme_selections_are_accepted_by_the_cli"],
    f"{MATERIALIZE} evaluation_report,sample_set --partition tiny":
        ["test_reliability_checkpoints.py::test_planted_pickles_are_never_unpickled",
         "test_reliability_kill.py::test_sigkill_after_a_checkpoint_resumes_to_the_uninterrupted_model",
         "test_readme_selections_are_accepted_by_the_cli"],
    "dagster job backfill -m exp1_assets.definitions -j experiment_job --noprompt":
        ["test_backfill_is_accepted_and_queued"],
    "dagster schedule start weekly_experiment -m exp1_assets.definitions": ["test_schedule_and_sensor_start"],
    "dagster sensor start exp1_automation -m exp1_assets.definitions": ["test_schedule_and_sensor_start"],
}


def readme_commands() -> list[list[str]]:
    """Commands in the README's bash blocks, and the module-naming `dagster` ones in its prose."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        commands += [argv for line in block.splitlines() if (argv := shlex.split(line, comments=True))]
    commands += [shlex.split(span) for span in re.findall(r"`(dagster [^`]*)`", text)
                 if "-m exp1_assets.definitions" in span]
    return [[Path(argv[0]).name if argv[0].endswith("/dagster") else argv[0], *argv[1:]] for argv in commands]


def readme_key(argv: list[str]) -> str:
    return " ".join(argv)


def test_every_readme_command_is_exercised() -> None:
    commands = {readme_key(argv) for argv in readme_commands()}
    assert commands == set(COVERED_BY), "README commands changed: cover the new ones in COVERED_BY"
    for test_ids in COVERED_BY.values():
        for test_id in test_ids:
            file, _, name = test_id.rpartition("::")
            source = TESTS / (file or Path(__file__).name)
            functions = {node.name for node in ast.walk(ast.parse(source.read_text()))
                         if isinstance(node, ast.FunctionDef)}
            assert name in functions, f"{test_id} does not exist"


def test_readme_run_configs_are_valid() -> None:
    """The `--config-json` example and the YAML run configs validate against the asset job."""
    from dagster import validate_run_config

    from exp1_assets.definitions import defs

    text = README.read_text()
    [config_json] = re.findall(r"--config-json '([^']*)'", text)
    configs = [json.loads(config_json)]
    configs += [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    # the override example, the benchmarks, the 8-GPU node, the memory plan's settings, the Slurm cluster
    assert len(configs) == 5
    job = defs.resolve_implicit_global_asset_job_def()
    for config in configs:
        validate_run_config(job, config)  # raises DagsterInvalidConfigError naming the bad field
    assert "hellaswag" in configs[1]["ops"]["benchmark_report"]["config"]["tasks"]
    assert configs[3]["ops"]["model_checkpoint"]["config"]["strategy"] == "fsdp_full"
    assert configs[4]["resources"]["launcher"]["config"]["backend"] == "slurm"


def make_dry_run(*targets: str) -> str:
    """`make -n`: the commands make would run, none of them run (no venv, no instance touched)."""
    # Under `make test` (CI) this is a sub-make: its MAKE* variables would add "Entering directory".
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "EXP1_HOME", "SIZE", "PORT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-n", "--no-print-directory", *targets], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_prints_the_commands_the_readme_promises() -> None:
    run = make_dry_run("run").splitlines()
    assert (".venv/bin/dagster asset materialize -m exp1_assets.definitions --select '*' --partition tiny "
            "--config scripts/run_local.yaml") in run
    # The README: "`make run` ends by printing where the reports are".
    for report in (".exp1_home/size_comparison/comparison.md", ".exp1_home/evaluation_report/tiny/report.md",
                   ".exp1_home/sample_set/tiny/samples.html", ".exp1_home/benchmark_report/tiny/benchmarks.md"):
        assert any(line.startswith("echo") and line.rstrip('"').endswith(f"{REPO}/{report}") for line in run), report
    for card in (".exp1_home/report_card/tiny/card.md", ".exp1_home/size_comparison/card.md"):
        assert any(line.startswith("echo") and f"{REPO}/{card} (and card.html)" in line for line in run), card
    # ... and the verdict itself, read from the size's card.
    assert any(line.startswith("sed") and f"{REPO}/.exp1_home/report_card/tiny/card.md" in line for line in run)
    # Setup creates the instance the README's `export` line points at, from scripts/dagster.yaml.
    assert f'mkdir -p "{REPO}/.dagster_home" "{REPO}/.exp1_home"' in run
    assert f'cp scripts/dagster.yaml "{REPO}/.dagster_home/dagster.yaml"' in run
    # two workers, a file per worker, and the slowest tests listed every run
    assert make_dry_run("test").splitlines()[-1] == ".venv/bin/pytest -q -n 2 --dist loadfile --durations=15"
    assert make_dry_run("dev").splitlines()[-1] == ".venv/bin/dagster dev -h 127.0.0.1 -p 3000"
    assert make_dry_run("test-fast").splitlines()[-1] == \
        '.venv/bin/pytest -q -m "not slow and not slurm and not browser"'
    # CI ("what CI runs: `bash .ci/run`") ends in the README's test command.
    assert (REPO / ".ci" / "run").read_text().rstrip().splitlines()[-1] == "make test"


# --- the dagster commands, for real -------------------------------------------------------------


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("readme")
    dagster_home, exp1_home = make_dagster_home(root / "dagster_home"), root / "exp1_home"
    exp1_home.mkdir()
    return {"root": root, "dagster_home": dagster_home, "exp1_home": exp1_home,
            "env": dev_env(dagster_home=dagster_home, exp1_home=exp1_home)}


def readme_command(prefix: str) -> list[str]:
    """The one README command starting with `prefix` (in the README's own words)."""
    [argv] = [argv for argv in readme_commands() if readme_key(argv).startswith(prefix)]
    return argv


def run_readme_command(argv: list[str], env: dict[str, str], *extra: str, timeout: float = 300):
    assert argv[0] == "dagster"
    proc = subprocess.run([str(BIN / "dagster"), *argv[1:], *extra], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{readme_key(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def instance_at(dagster_home: Path, monkeypatch: pytest.MonkeyPatch):
    from dagster import DagsterInstance

    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))  # dagster.yaml: storage under $DAGSTER_HOME
    return DagsterInstance.get()


def test_schedule_and_sensor_start(homes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

    run_readme_command(readme_command("dagster schedule start weekly_experiment"), homes["env"])
    run_readme_command(readme_command("dagster sensor start exp1_automation"), homes["env"])
    with instance_at(homes["dagster_home"], monkeypatch) as instance:
        states = {(s.instigator_name, s.instigator_type): s.status for s in instance.all_instigator_state()}
    assert states == {("weekly_experiment", InstigatorType.SCHEDULE): InstigatorStatus.RUNNING,
                      ("exp1_automation", InstigatorType.SENSOR): InstigatorStatus.RUNNING}


def test_backfill_is_accepted_and_queued(homes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI records the backfill and submits one run per size to the queue; no daemon runs here,
    so the runs stay QUEUED (scripts/dagster.yaml's queued coordinator): nothing is trained."""
    from dagster import DagsterRunStatus, RunsFilter

    proc = run_readme_command(readme_command("dagster job backfill"), homes["env"])
    assert "Launched backfill job" in proc.stdout, proc.stdout
    with instance_at(homes["dagster_home"], monkeypatch) as instance:
        [backfill] = instance.get_backfills()
        assert list(backfill.partition_names) == SIZES  # "every size"
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(SIZES)
        assert {r.job_name for r in runs} == {"experiment_job"}
        assert {r.status for r in runs} == {DagsterRunStatus.QUEUED}
        for run in runs:  # leave nothing a daemon pointed at this instance would pick up
            instance.report_run_canceled(run)
        assert {r.status for r in instance.get_runs(RunsFilter(run_ids=[r.run_id for r in runs]))} == \
            {DagsterRunStatus.CANCELED}


def test_materialize_the_data_half(homes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`--select 'group:data'` for real, with the FAST config (in one process: lighter on CI)."""
    config = homes["root"] / "fast.yaml"
    config.write_text(yaml.safe_dump({**only(fast_run_config(), *DATA),
                                      "execution": {"config": {"in_process": {}}}}))
    argv = readme_command(f"{MATERIALIZE} group:data")
    run_readme_command(argv, homes["env"], "--config", str(config), timeout=600)
    from dagster import AssetKey

    with instance_at(homes["dagster_home"], monkeypatch) as instance:
        events = {name: instance.get_latest_materialization_event(AssetKey(name)) for name in ALL}
    assert sorted(name for name, event in events.items() if event) == DATA
    assert len({events[name].run_id for name in DATA}) == 1  # one run, the four data assets
    assert (homes["exp1_home"] / "packed_dataset" / "train.arrow").is_file()


@pytest.mark.parametrize("selection, expected", [
    ("*", ALL), ("group:data", DATA), ("evaluation_report,sample_set", ["evaluation_report", "sample_set"]),
])
def test_readme_selections_are_accepted_by_the_cli(homes: dict[str, Any], selection: str, expected: list[str]) -> None:
    [argv] = [argv for argv in readme_commands()
              if argv[:3] == ["dagster", "asset", "materialize"] and argv[argv.index("--select") + 1] == selection]
    if "--partition" in argv:
        from exp1_assets.defs.partitions import size_partitions

        assert argv[argv.index("--partition") + 1] in size_partitions.get_partition_keys()
    proc = run_readme_command(["dagster", "asset", "list", "-m", "exp1_assets.definitions", "--select", selection],
                              homes["env"])
    assert sorted(proc.stdout.split()) == expected
