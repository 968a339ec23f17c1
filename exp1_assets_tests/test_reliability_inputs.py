"""Reliability against bad input: generated garbage rows, and bad configs that must fail first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exp1_assets.data.sources import ingest_conversations
from exp1_assets.evaluation.prompts import load_prompts
from exp1_assets.training.spec import DebugSpec, TrainSpec

JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False), st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(["", " ", "\u200b", "\ufeff", "<|im_end|>", "\U0001f600" * 3, "a" * 5000, "\x00"]),
)
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
TURN = st.fixed_dictionaries({"from": st.sampled_from(["system", "human", "gpt", "user", "assistant", "robot", "",
                                                      " ChatGPT", "BING", "bard", 7]),
                              "value": st.one_of(JSON_LEAF, JSON_ANY)})
ROW = st.one_of(
    st.fixed_dictionaries({"conversations": st.lists(TURN, max_size=4)}),  # almost right
    st.fixed_dictionaries({"conversations": JSON_ANY}),  # wrong types
    JSON_ANY,  # anything at all, including non-objects
)


def _line(kind: str, row, noise: bytes) -> bytes:
    text = json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if kind == "truncated":
        return text[: max(1, len(text) // 2)]
    if kind == "binary":
        return noise or b"\xff\xfe"
    return text


LINES = st.lists(st.tuples(st.sampled_from(["json", "json", "truncated", "binary"]), ROW,
                           st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b.strip())),
                 min_size=1, max_size=25)
GOOD = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=LINES)
def test_every_generated_row_is_kept_or_quarantined_with_a_reason(tmp_path: Path, lines) -> None:
    encoded = [_line(kind, row, noise) for kind, row, noise in lines]
    encoded = [line for line in encoded if b"\n" not in line and b"\r" not in line and line.strip()]
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b"\n".join([json.dumps(GOOD).encode(), *encoded]) + b"\n")  # one good row: never "all bad"
    out = tmp_path / "out"
    result = ingest_conversations(source="local", path=str(data), hub_id="", max_samples=None, seed=0, out_dir=out)
    assert result.input_rows == len(encoded) + 1
    assert result.rows + result.quarantined == result.input_rows
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text(encoding="utf-8").split("\n") if line]  # not splitlines(): U+0085 is inside rows
    assert len(quarantine) == result.quarantined == sum(result.quarantine_reasons.values())
    assert all(entry["reason"] and isinstance(entry["detail"], str) for entry in quarantine)
    import pyarrow.parquet as pq

    kept = pq.read_table(out / "conversations.parquet").column("messages").to_pylist()
    assert len(kept) == result.rows
    for messages in kept:  # what packing and evaluation rely on
        roles = [m["role"] for m in messages]
        assert set(roles) <= {"system", "user", "assistant"} and all(m["content"] for m in messages)
        assert "user" in roles and "assistant" in roles[roles.index("user"):]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"role_aliases": {"bot": "robot"}}, r"role_aliases\['bot'\]: 'robot' is not one of"),
    ({"role_aliases": {"": "user"}}, r"role_aliases\[''\]: alias names must be non-empty strings"),
    ({"role_aliases": {"Bot": "user", "bot": "assistant"}}, r"role_aliases\['bot'\]: 'assistant' clashes with "
                                                           r"role_aliases\['Bot'\]: 'user'"),
    ({"role_aliases": {"student": "user"}, "replace_default_roles": True}, r"role_aliases: no name maps to \['assistant'\]"),
    ({"replace_default_roles": True}, r"role_aliases: no name maps to \['user', 'assistant'\]"),
    ({"role_aliases": ["human"]}, r"role_aliases: must be a mapping"),
    ({"leading_assistant": "drop"}, r"leading_assistant: 'drop' is not one of \('keep', 'quarantine'\)"),
])
def test_bad_role_configs_fail_before_reading_naming_the_entry(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ingest_conversations(source="local", path=str(tmp_path / "never-read.jsonl"), hub_id="", max_samples=None,
                             seed=0, out_dir=tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists()


# ---- bad configs fail before any work, naming the field -----------------------------------

SPEC_PATHS = dict(train_path="t", validation_path="v", tokenizer_path="k", output_dir="o", run_dir="r")


@pytest.mark.parametrize(("size", "overrides", "field"), [
    ("2B", {}, "size"),
    ("tiny", {"learning_rate": 0.0}, "learning_rate"),
    ("tiny", {"learning_rate": -1e-3}, "learning_rate"),
    ("tiny", {"per_device_batch": 0}, "per_device_batch"),
    ("tiny", {"grad_accum": -2}, "grad_accum"),
    ("tiny", {"max_length": 100_000}, "max_length"),
    ("tiny", {"max_steps": None, "num_epochs": 0.0}, "num_epochs"),
    ("tiny", {"max_steps": 0}, "max_steps"),
    ("tiny", {"max_steps": 10, "num_epochs": 2.0}, "max_steps and num_epochs"),
])
def test_bad_training_specs_name_the_field(size: str, overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        TrainSpec.from_size(size, **SPEC_PATHS, **overrides)
    with pytest.raises(ValueError, match=r"^debug.fail_on_rank: "):
        DebugSpec(fail_on_rank=-1)


@pytest.mark.parametrize(("config", "field"), [
    ({"max_steps": -5}, "max_steps"), ({"per_device_batch": -1}, "per_device_batch"),
    ({"learning_rate": -0.1}, "learning_rate"), ({"grad_accum": -1}, "grad_accum"),
    ({"max_steps": 0}, "max_steps"), ({"num_epochs": 1.0, "max_steps": 5}, "max_steps and num_epochs"),
])
def test_bad_train_configs_fail_the_asset_before_launching(tmp_path: Path, config: dict, field: str) -> None:
    from exp1_assets.defs.training_assets import TrainConfig
    from exp1_assets.training.spec import build_train_spec

    packed = tmp_path / "packed_dataset"
    packed.mkdir()
    (packed / "meta.json").write_text(json.dumps({"max_length": 128}))
    (packed / "version.txt").write_text("v1")
    with pytest.raises(ValueError, match=field):
        build_train_spec(size="tiny", overrides=TrainConfig(**config).spec_overrides(), packed_dir=packed,
                         tokenizer_dir=tmp_path / "tokenizer", output_dir=tmp_path / "o", final_dir=tmp_path / "f",
                         runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing was launched, or even prepared


def test_a_train_config_sets_only_what_it_names_and_the_registry_owns_the_rest(tmp_path: Path) -> None:
    from exp1_assets.defs.training_assets import TrainConfig
    from exp1_assets.sizes import get_size
    from exp1_assets.training.spec import build_train_spec

    packed = tmp_path / "packed_dataset"
    packed.mkdir()
    (packed / "meta.json").write_text(json.dumps({"max_length": 128}))
    (packed / "version.txt").write_text("v1")
    spec = build_train_spec(size="125M", overrides=TrainConfig(learning_rate=5e-4).spec_overrides(),
                            packed_dir=packed, tokenizer_dir=tmp_path / "tok", output_dir=tmp_path / ".tmp-o",
                            final_dir=tmp_path / "o", runs_dir=tmp_path / "runs")
    size = get_size("125M")
    assert spec.learning_rate == 5e-4 and spec.max_length == 128 and spec.data_version == "v1"
    assert (spec.per_device_batch, spec.grad_accum, spec.gradient_checkpointing) == (
        size.per_device_batch, size.grad_accum, size.gradient_checkpointing)
    assert spec.max_steps is None and spec.num_epochs == size.num_epochs  # 125M trains whole epochs
    assert spec.run_dir == str(tmp_path / "runs" / spec.spec_hash())
    assert spec.as_published().output_dir == str(tmp_path / "o")  # what train_spec.json and metadata show
    epochs = build_train_spec(size="tiny", overrides=TrainConfig(num_epochs=2.0).spec_overrides(),
                              packed_dir=packed, tokenizer_dir=tmp_path / "tok", output_dir=tmp_path / "o",
                              final_dir=tmp_path / "o", runs_dir=tmp_path / "runs")
    assert (epochs.max_steps, epochs.num_epochs) == (None, 2.0)  # epochs asked: tiny's 300 steps no longer apply


def test_missing_and_non_file_local_paths_are_named(tmp_path: Path) -> None:
    kwargs = dict(source="local", hub_id="", max_samples=None, seed=0, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match=r"path: .*missing\.jsonl.* does not exist"):
        ingest_conversations(path=str(tmp_path / "missing.jsonl"), **kwargs)
    # chmod 000 does not stop root; a directory where a file should be stops everyone.
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(ValueError, match=r"path: .*folder\.jsonl.* is a directory"):
        ingest_conversations(path=str(tmp_path / "folder.jsonl"), **kwargs)


@pytest.mark.parametrize(("lines", "where"), [
    (['{"category": "qa", "prompt": "hi"}', '{"category": "qa"'], ":2: invalid JSON"),
    (['{"category": "qa", "prompt": ""}'], ":1: field 'prompt' must be a non-empty string"),
    (['["qa", "hi"]'], ":1: expected an object"),
    (['{"category": 3, "prompt": "hi"}'], ":1: field 'category'"),
])
def test_sample_prompt_files_with_bad_rows_name_the_line(tmp_path: Path, lines: list[str], where: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=str(path) + where.replace("(", r"\(")):
        load_prompts(inline=None, path=str(path))
