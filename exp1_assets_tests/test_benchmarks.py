"""benchmark_report: lm-evaluation-harness on a checkpoint, checked against plain transformers.

One module fixture trains a small ChatML model for a few seconds on built-in corpus rows and
materializes `benchmark_report[tiny]` through Dagster and the launcher, on the package's two
offline tasks plus a user's own task folder given through the run config. The tests then
recompute what lm-eval reported, doc by doc, with nothing but the checkpoint and the docs:
multiple-choice predictions from summed log-likelihoods under the chat template, exact matches
from greedy `model.generate`, and lm-eval's stderr and the chance level from their formulas.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from exp1_assets_tests.eval_tiny_model import make_checkpoint

DOCS = 40  # per built-in task: enough for non-trivial numbers, a few seconds on CPU
USER_TASK, USER_DOCS = "my_reply_form", 16
TASKS = ("exp1_answer_choice", "exp1_arithmetic_exact", USER_TASK)


def corpus_rows(*, size: int, seed: int) -> list[dict[str, Any]]:
    """Built-in corpus rows as conversation_splits writes them (messages, task, answer)."""
    from exp1_assets.data.builtin_corpus import generate_rows
    from exp1_assets.data.conversation import normalize_row

    return [normalize_row(raw, row=i) for i, raw in enumerate(generate_rows(size=size, seed=seed))]


def train(folder: Path, rows: list[dict[str, Any]], *, steps: int) -> None:
    """A few dozen steps on single-turn corpus rows: the model learns the replies' form, some answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp1_assets.training.integrity import write_manifest
    from exp1_assets_tests._training_data import render

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    from exp1_assets.evaluation.benchmark_data import single_turn

    # Single-turn arithmetic: short (the test tokenizer is small) and one phrasing, "a + b = c.", that a
    # minute of training teaches, so the answer regex has replies to read.
    chats = [r["messages"] for r in rows if r["task"] == "arithmetic" and single_turn(r["messages"])]
    rendered = [render(tokenizer, chat) for chat in chats[: 32 * steps]]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread of the 2 shared cores
    try:
        for step in range(steps):
            batch = [rendered[(32 * step + i) % len(rendered)] for i in range(32)]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    write_manifest(folder)  # as training does: the job verifies it before loading


def write_user_task(folder: Path) -> Path:
    """A user's own multiple-choice task, a YAML with `dataset_path: json` and its local jsonl: which
    reply has the form the model was trained on ("a + b = c.") among scrambled ones of other lengths."""
    rng = random.Random(3)
    docs = []
    for _ in range(USER_DOCS):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        right = f"{a} + {b} = {a + b}."
        replies = [right, f"{a} {b} {a + b}", f"= + {a}{b} . {a + b} ="]
        rng.shuffle(replies)
        docs.append({"question": f"What is {a} + {b}?", "choices": replies, "label": replies.index(right)})
    folder.mkdir(parents=True)
    (folder / "form.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "form.yaml").write_text(
        f"task: {USER_TASK}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'form.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: question\ndoc_to_choice: choices\n"
        "doc_to_target: label\ntarget_delimiter: ''\nmetric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n")
    return folder


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):
    """benchmark_report[tiny] materialized through Dagster; yields (home, result, report)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dagster import DagsterInstance, materialize

    from exp1_assets.data.sources import CONVERSATION_SCHEMA
    from exp1_assets.defs.benchmark_assets import benchmark_report
    from exp1_assets.defs.launcher import JobLauncher
    from exp1_assets.defs.store import ArtifactStore

    home = tmp_path_factory.mktemp("bench_home")
    splits = home / "conversation_splits"
    splits.mkdir()
    pq.write_table(pa.Table.from_pylist(corpus_rows(size=1200, seed=7), schema=CONVERSATION_SCHEMA),
                   splits / "test.parquet")
    train(make_checkpoint(home / "model_checkpoint" / "tiny"), corpus_rows(size=3000, seed=1), steps=40)
    user_tasks = write_user_task(home / "user_tasks")
    config = {"tasks": list(TASKS), "include_path": [str(user_tasks)], "builtin_docs": DOCS}
    with DagsterInstance.ephemeral(tempdir=str(tmp_path_factory.mktemp("dagster_home"))) as instance:
        result = materialize([benchmark_report], instance=instance, partition_key="tiny",
                             resources={"store": ArtifactStore(root=str(home)), "launcher": JobLauncher()},
                             run_config={"ops": {"benchmark_report": {"config": config}}})
        report = json.loads((home / "benchmark_report" / "tiny" / "benchmarks.json").read_text())
        yield home, result, report


def samples(home: Path, task: str) -> list[dict[str, Any]]:
    path = home / "benchmark_report" / "tiny" / "samples" / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def load(home: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = home / "model_checkpoint" / "tiny"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def prompt(tokenizer, doc: dict[str, Any]) -> str:
    """The doc's chat-templated context, built here from the doc alone (not from lm-eval's log)."""
    messages = ([{"role": "system", "content": doc["system"]}] if doc.get("system") else [])
    messages.append({"role": "user", "content": doc["question"]})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def choice_logliks(model, tokenizer, doc: dict[str, Any]) -> list[float]:
    """Summed log-probabilities of each choice's tokens after the context (one right-padded batch:
    a causal model's logits at real positions never see the padding after them)."""
    import torch

    context = tokenizer(prompt(tokenizer, doc), add_special_tokens=False)["input_ids"]
    targets = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in doc["choices"]]
    width = len(context) + max(len(t) for t in targets)
    rows = [context + t + [tokenizer.pad_token_id] * (width - len(context) - len(t)) for t in targets]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor(rows)).logits.double(), dim=-1)
    return [float(logprobs[row, len(context) - 1 + torch.arange(len(t)), t].sum()) for row, t in enumerate(targets)]


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@pytest.mark.parametrize("task", ["exp1_answer_choice", USER_TASK])
def test_multiple_choice_accuracy_equals_the_argmax_of_summed_log_likelihoods(bench, task: str) -> None:
    home, _, report = bench
    model, tokenizer = load(home)
    logged = samples(home, task)
    assert len(logged) == report["tasks"][task]["samples"] == (DOCS if task != USER_TASK else USER_DOCS)
    right, right_norm = [], []
    for sample in logged:
        doc = sample["doc"]
        scores = choice_logliks(model, tokenizer, doc)
        lengths = [len(c) for c in doc["choices"]]  # acc_norm: per character of the choice
        right.append(float(argmax(scores) == doc["label"]))
        right_norm.append(float(argmax([s / n for s, n in zip(scores, lengths)]) == doc["label"]))
        assert sample["acc"] == right[-1], doc
    entry = report["tasks"][task]
    expected = {"acc": sum(right) / len(right), "acc_norm": sum(right_norm) / len(right_norm)}
    assert entry["value"] == expected[entry["metric"]]
    assert entry["metric"] == ("acc_norm" if task == USER_TASK else "acc")  # acc_norm leads where reported
    if task != USER_TASK:
        assert 0 < entry["value"] < 1  # neither all right nor all wrong: the comparison can tell
    assert entry["chance"] == pytest.approx(sum(1 / len(s["doc"]["choices"]) for s in logged) / len(logged))


def test_generated_exact_match_equals_greedy_generate_then_the_answer_regex(bench) -> None:
    home, _, report = bench
    model, tokenizer = load(home)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    logged = samples(home, "exp1_arithmetic_exact")
    for sample in logged[:8]:
        inputs = tokenizer(prompt(tokenizer, sample["doc"]), add_special_tokens=False, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False, eos_token_id=end,
                             pad_token_id=tokenizer.pad_token_id)
        reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert sample["resps"][0][0] == reply
        found = re.search(r"=\s*(-?[0-9]+)", reply)
        assert sample["filtered_resps"][0] == (found.group(1) if found else "[invalid]")
    assert [s["exact_match"] for s in logged] == [float(s["filtered_resps"][0] == s["doc"]["answer"]) for s in logged]
    entry = report["tasks"]["exp1_arithmetic_exact"]
    assert entry["value"] == sum(s["exact_match"] for s in logged) / len(logged)
    assert (entry["metric"], entry["chance"], entry["output_type"]) == ("exact_match", 0.0, "generate_until")
    assert any(s["filtered_resps"][0] != "[invalid]" for s in logged)  # the replies have the "= n" form


def test_stderr_is_the_sample_stderr_and_above_chance_needs_two_of_them(bench) -> None:
    _, _, report = bench
    assert list(report["tasks"]) == list(TASKS) and report["tasks_requested"] == list(TASKS)
    for entry in report["tasks"].values():
        p, n = entry["value"], entry["samples"]
        assert entry["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-9)
        assert entry["above_chance"] == (p - 2 * entry["stderr"] > entry["chance"])
    assert report["tasks"][USER_TASK]["chance"] == pytest.approx(1 / 3)


def test_the_asset_reports_the_table_per_task_numbers_and_a_warn_check(bench) -> None:
    from dagster import AssetCheckSeverity

    home, result, report = bench
    assert result.success
    [materialization] = result.asset_materializations_for_node("benchmark_report")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    for name, entry in report["tasks"].items():
        assert metadata[f"{name}/{entry['metric']}"] == entry["value"]
        assert metadata[f"{name}/stderr"] == entry["stderr"] and metadata[f"{name}/chance"] == entry["chance"]
        assert name.replace("_", "\\_") in metadata["table"]
    [check] = result.get_asset_check_evaluations()
    below = sorted(name for name, entry in report["tasks"].items() if not entry["above_chance"])
    assert (check.check_name, check.passed, check.severity) == ("benchmarks_above_chance", not below,
                                                                 AssetCheckSeverity.WARN)
    assert check.metadata["not_above_chance"].value == below
    out = home / "benchmark_report" / "tiny"
    assert "| task | metric | value |" in (out / "benchmarks.md").read_text()
    assert report["include_path"] == [str(home / "user_tasks")]
    # The built-in tasks' YAMLs in the artifact name their data beside them, not the staging folder.
    assert "data_files:\n    test: exp1_answer_choice.jsonl" in (out / "tasks" / "exp1_answer_choice.yaml").read_text()


def test_hub_tasks_fail_offline_and_unknown_names_fail_naming_where_they_were_looked_for(tmp_path: Path,
                                                                                           monkeypatch) -> None:
    from huggingface_hub import constants

    from exp1_assets.evaluation.benchmark_lookup import load_tasks, require_known, task_manager

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    manager = task_manager(["hellaswag"], include_paths=[])
    with pytest.raises(ValueError) as error:  # a ValueError: the launcher does not retry it
        load_tasks(manager, ["hellaswag", "arc_easy"])
    lines = str(error.value).splitlines()
    assert lines[0].startswith("hellaswag: its dataset (Rowan/hellaswag) is on the Hugging Face Hub and this "
                               "machine is offline (HF_HUB_OFFLINE=1): ")
    assert lines[1].startswith("arc_easy: its dataset (allenai/ai2_arc) is on the Hugging Face Hub and this ")
    assert lines[2].startswith("Use preset 'builtin', or a local task YAML") and len(lines) == 3
    with pytest.raises(ValueError) as error:
        require_known(manager, ["hellaswag", "hellaswagg"], include_paths=[str(tmp_path)])
    message = str(error.value)
    assert message.startswith("unknown benchmark task(s): 'hellaswagg' (did you mean hellaswag")
    assert "lm_eval/tasks" in message and str(tmp_path) in message


def test_the_spec_defaults_to_the_offline_preset_and_refuses_bad_task_lists() -> None:
    from exp1_assets.evaluation.benchmark_job import BenchmarkSpec

    paths = dict.fromkeys(("checkpoint_path", "test_path", "output_dir", "run_dir"), "/x")
    assert BenchmarkSpec(**paths).task_names() == ("exp1_answer_choice", "exp1_arithmetic_exact")
    assert BenchmarkSpec(**paths, preset="standard").task_names() == (
        "hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande")
    assert BenchmarkSpec(**paths, preset="standard", tasks=("mmlu",)).task_names() == ("mmlu",)
    for bad, field in (({"tasks": ()}, "tasks"), ({"tasks": ("a", "a")}, "tasks"), ({"preset": "all"}, "preset"),
                       ({"builtin_docs": 0}, "builtin_docs"), ({"limit": 1.5}, "limit")):
        with pytest.raises(ValueError, match=f"^{field}: "):
            BenchmarkSpec(**paths, **bad)
