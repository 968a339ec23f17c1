"""Security by grep: no remote code, no pickled weights, torch.load only with weights_only=True.

The behavioural half (a planted pickle is never unpickled, planted secrets never reach a file)
is in test_reliability_checkpoints.py; report escaping in test_eval_reports.py.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "exp1_assets"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(pattern: str) -> list[tuple[str, str]]:
    return [(f"{p.relative_to(PACKAGE)}:{n}", line.strip()) for p in SOURCES
            for n, line in enumerate(p.read_text().splitlines(), start=1) if re.search(pattern, line)]


def test_the_package_is_scanned() -> None:
    assert len(SOURCES) > 30 and any(p.name == "train.py" for p in SOURCES)


def test_no_remote_code_is_ever_trusted() -> None:
    assert not _calls(r"trust_remote_code")


def test_no_pickle_for_weights_or_anything_else() -> None:
    assert not _calls(r"^\s*(import|from)\s+(pickle|dill|cloudpickle|joblib)\b")
    assert not _calls(r"\.bin[\"']") or all("never" in line for _, line in _calls(r"\.bin[\"']"))


def test_torch_load_always_restricts_to_weights() -> None:
    loads = _calls(r"torch\.load\(")
    assert all("weights_only=True" in line for _, line in loads), loads


def test_model_loading_insists_on_safetensors() -> None:
    loads = _calls(r"AutoModelForCausalLM\.from_pretrained\(")
    assert loads and all("use_safetensors=True" in line for _, line in loads), loads
