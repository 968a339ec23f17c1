"""The versions CI tested (constraints.txt) agree with the ranges the code declares (pyproject.toml).

A bump of one without the other fails here: a pin outside its declared range would make
`make setup` fail to resolve, and a torch pin unlike the Makefile's CPU build would install torch
twice or not at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"


def declared() -> list[Requirement]:
    """The project's dependencies and its dev extras, as pyproject.toml states them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(line) for line in lines]


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: exact version}; every non-comment line is `name==version`."""
    result: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        assert match, f"constraints.txt:{number}: not an exact pin `name==version`: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in result, f"constraints.txt:{number}: {name} pinned twice"
        result[name] = match.group(2)
    return result


def setup_commands() -> list[str]:
    """What `make setup` runs when constraints.txt changed (`make -n -W`: printed, nothing run)."""
    # Under `make test` this is a sub-make: its MAKE* variables would add "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-n", "--no-print-directory", "-W", "constraints.txt", ".venv/.installed"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_every_declared_dependency_is_pinned_within_its_declared_range() -> None:
    pinned = pins()
    missing = [str(req) for req in declared() if canonicalize_name(req.name) not in pinned]
    assert missing == [], "declared but not in constraints.txt (run `make upgrade`)"
    outside = [f"{req.name}=={pinned[canonicalize_name(req.name)]} not in {req.specifier}"
               for req in declared()
               if not req.specifier.contains(pinned[canonicalize_name(req.name)], prereleases=True)]
    assert outside == []


def test_declared_ranges_refuse_the_releases_the_code_cannot_run_on() -> None:
    ranges = {canonicalize_name(req.name): req.specifier for req in declared()}
    # transformers 4 has no activation_checkpointing and 5.23 no model(cache=...);
    # dagster 1.12.12 has no AssetCheckSpec(partitions_def=...).
    assert [v for v in ("4.57.6", "5.23.0", "5.24.0") if ranges["transformers"].contains(v)] == ["5.24.0"]
    assert [v for v in ("1.12.12", "1.12.13", "2.0.0") if ranges["dagster"].contains(v)] == ["1.12.13"]


def test_torch_pin_equals_the_cpu_build_make_setup_installs_first() -> None:
    commands = setup_commands()
    [torch_line] = [line for line in commands if "nvidia-smi" in line]
    [makefile_torch] = re.findall(r'"torch==([^"]+)"', torch_line)
    assert pins()["torch"] == makefile_torch
    assert Version(makefile_torch).local is None  # one pin for the CPU and the CUDA build


def test_a_changed_constraints_file_reinstalls_through_it() -> None:
    commands = setup_commands()
    assert commands[-2:] == ['.venv/bin/pip install -q -c constraints.txt -e ".[dev]"', "touch .venv/.installed"]
    [torch_line] = [line for line in commands if "nvidia-smi" in line]
    assert ".venv/bin/pip install -q -c constraints.txt \"torch==" in torch_line
