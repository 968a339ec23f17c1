"""The scaling fit (loss against parameters as a power law) and what the size comparison shows:
the fit or why there is none, the metrics' intervals as error bars, and the benchmarks beside them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from exp1_assets.evaluation import comparison
from exp1_assets.evaluation.scaling import ScalingPoint, fit_power_law, scaling_summary


def _row(size: str, parameters: float, loss: float) -> dict:
    return {"size": size, "parameters": parameters, "final_val_loss": loss}


def test_the_fit_recovers_a_known_exponent_and_coefficient() -> None:
    sizes = [1e6, 2.5e6, 5e6, 1.6e7, 1e8]
    fit = fit_power_law([ScalingPoint(size=str(n), parameters=n, loss=12.0 * n ** -0.25) for n in sizes])
    assert fit.a == pytest.approx(12.0, rel=1e-9) and fit.alpha == pytest.approx(0.25, rel=1e-9)
    assert fit.r_squared == pytest.approx(1.0) and fit.n == 5
    assert all(abs(r["residual"]) < 1e-12 for r in fit.residuals().values())


def test_residuals_and_r_squared_equal_a_hand_computed_regression() -> None:
    """ln N = 0, 1, 2 and ln L = 1, 0, 0.5: slope -0.25, intercept 0.75, residuals 0.25, -0.5, 0.25,
    R^2 = 1 - 0.375 / 0.5 = 0.25."""
    points = [ScalingPoint(size=name, parameters=math.exp(x), loss=math.exp(y))
              for name, x, y in (("s", 0, 1.0), ("m", 1, 0.0), ("l", 2, 0.5))]
    fit = fit_power_law(points)
    assert fit.alpha == pytest.approx(0.25) and fit.a == pytest.approx(math.exp(0.75))
    assert fit.r_squared == pytest.approx(0.25)
    residuals = fit.residuals()
    assert [residuals[s]["log_residual"] for s in "sml"] == pytest.approx([0.25, -0.5, 0.25])
    assert residuals["m"]["predicted"] == pytest.approx(math.exp(0.5))
    assert residuals["m"]["residual"] == pytest.approx(1.0 - math.exp(0.5))


def test_the_fit_equals_numpys_least_squares_on_noisy_losses() -> None:
    rng = np.random.default_rng(0)
    n = np.array([1.0e6, 2.5e6, 5.2e6, 1.6e7])
    loss = 9.0 * n ** -0.15 * np.exp(rng.normal(0, 0.03, n.size))
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    summary = scaling_summary([_row(f"s{i}", float(p), float(v)) for i, (p, v) in enumerate(zip(n, loss))])
    assert summary["fit"]["alpha"] == pytest.approx(-slope) and summary["fit"]["a"] == pytest.approx(math.exp(intercept))
    predicted = np.exp(intercept + slope * np.log(n))
    assert [r["residual"] for r in summary["fit"]["residuals"].values()] == pytest.approx(list(loss - predicted))


@pytest.mark.parametrize(("losses", "reason"), [
    ([2.0, 1.5], "2 sizes with a validation loss; a power-law fit needs at least 3"),
    ([2.0], "1 size with a validation loss; a power-law fit needs at least 3"),
    ([], "0 sizes with a validation loss; a power-law fit needs at least 3"),
])
def test_fewer_than_three_sizes_give_no_fit_and_say_why(losses: list[float], reason: str) -> None:
    summary = scaling_summary([_row(f"s{i}", 1e6 * (i + 1), loss) for i, loss in enumerate(losses)])
    assert summary["fit"] is None and summary["reason"] == reason


def test_sizes_without_a_finite_loss_or_parameter_count_are_left_out_with_the_reason() -> None:
    rows = [_row("a", 1e6, 2.0), _row("b", 2e6, float("nan")), _row("c", 4e6, 1.6),
            {"size": "d", "parameters": float("nan"), "final_val_loss": 1.2}, _row("e", 8e6, float("inf")),
            _row("f", 1.6e7, 1.3)]
    summary = scaling_summary(rows)
    assert summary["excluded"] == {"b": "no finite final validation loss", "d": "no parameter count",
                                   "e": "no finite final validation loss"}
    assert summary["sizes"] == ["a", "c", "f"] and summary["fit"]["n"] == 3
    assert set(summary["fit"]["residuals"]) == {"a", "c", "f"}
    # Two usable sizes of four is still no fit.
    assert scaling_summary(rows[:4])["reason"] == "2 sizes with a validation loss; a power-law fit needs at least 3"


def test_equal_parameter_counts_give_no_fit() -> None:
    summary = scaling_summary([_row(s, 1e6, loss) for s, loss in (("a", 2.0), ("b", 1.9), ("c", 1.8))])
    assert summary["fit"] is None and summary["reason"] == "every size has the same parameter count; no slope to fit"


# ---- the size comparison: the fit, error bars, benchmarks ---------------------------------------

def _inputs(losses: dict[str, tuple[int, float]]) -> dict:
    return {"reports": {s: {"metrics": {"perplexity": 3.0, "rouge_l": 0.4}} for s in losses},
            "training": {s: {"param_count": n, "val_loss_after": loss} for s, (n, loss) in losses.items()},
            "loss_histories": {}}


def test_the_comparison_states_the_fit_and_each_sizes_residual(tmp_path: Path) -> None:
    losses = {s: (n, 9.0 * n ** -0.15) for s, n in
              (("ladder-1M", 1_018_112), ("ladder-2.5M", 2_510_592), ("tiny", 5_182_976), ("ladder-16M", 15_640_320))}
    result = comparison.compare_sizes(**_inputs(losses), out_dir=tmp_path, all_sizes=list(losses))
    fit = json.loads((tmp_path / "comparison.json").read_text())["scaling"]["fit"]
    assert (round(fit["a"], 9), round(fit["alpha"], 9), round(fit["r_squared"], 9), fit["n"]) == (9.0, 0.15, 1.0, 4)
    assert set(fit["residuals"]) == set(losses) and result["scaling"]["fit"]["n"] == 4
    md = (tmp_path / "comparison.md").read_text()
    assert "Fit: L = 9 * N^(-0.1500) (least squares in log-log space, R^2 = 1.0000, n = 4 sizes)." in md
    assert "| ladder-16M | 0.7501 | 0.7501 | 0.0000 | 0.0000 |" in md  # 9 * 15,640,320^-0.15 = 0.75008
    assert [r["role"] for r in result["rows"]] == ["ladder", "ladder", "debug", "ladder"]
    assert (tmp_path / "val_loss_vs_params.png").stat().st_size > 0


def test_a_ladder_on_one_small_token_budget_is_called_data_limited_in_the_report_and_card(tmp_path: Path) -> None:
    from exp1_assets.evaluation.report_card import comparison_card

    # The measured CPU ladder: 606,336 tokens each, so 0.6 tokens per parameter at 1M and 0.039 at 16M.
    losses = {"ladder-1M": (1_018_112, 1.2398), "ladder-2.5M": (2_510_592, 1.0659), "tiny": (5_182_976, 0.9946),
              "ladder-16M": (15_640_320, 1.0002)}
    inputs = _inputs(losses)
    for record in inputs["training"].values():
        record["tokens_seen"] = 606_336
    result = comparison.compare_sizes(**inputs, out_dir=tmp_path, all_sizes=list(losses))
    scaling = result["scaling"]
    note = ("data-limited: every size saw 606,336 training tokens, 0.039-0.6 per parameter against ~20 for "
            "compute-optimal training")
    assert scaling["data_note"] == note
    assert scaling["tokens_per_parameter"]["ladder-16M"] == pytest.approx(606_336 / 15_640_320)
    assert f"Caution, {note}" in (tmp_path / "comparison.md").read_text()
    assert comparison_card([], scaling=scaling).scaling.endswith("; " + note)
    # Enough tokens for the largest size (>= 20 per parameter): no caution.
    for record in inputs["training"].values():
        record["tokens_seen"] = 20 * 15_640_320
    assert comparison.compare_sizes(**inputs, out_dir=tmp_path / "enough", all_sizes=list(losses))[
        "scaling"]["data_note"] is None


def test_with_two_sizes_the_comparison_says_why_there_is_no_fit(tmp_path: Path) -> None:
    result = comparison.compare_sizes(**_inputs({"tiny": (5_182_976, 0.9), "125M": (151_862_016, float("nan")),
                                                 "ladder-1M": (1_018_112, 1.2)}),
                                      out_dir=tmp_path, all_sizes=["tiny", "125M", "ladder-1M"])
    assert result["scaling"]["fit"] is None
    md = (tmp_path / "comparison.md").read_text()
    assert "No power-law fit: 2 sizes with a validation loss; a power-law fit needs at least 3." in md
    assert "Not in the fit: 125M (no finite final validation loss)" in md


def test_intervals_become_table_ranges_and_error_bars_only_where_the_report_has_them(tmp_path: Path) -> None:
    inputs = _inputs({"a": (1_000_000, 2.0), "b": (2_000_000, 1.8), "c": (4_000_000, 1.6)})
    inputs["reports"]["a"]["intervals"] = {"perplexity": {"low": 2.8, "high": 3.3}, "rouge_l": {"low": 0.35, "high": 0.45}}
    inputs["reports"]["b"]["intervals"] = {"perplexity": {"low": None, "high": None}}  # not computable
    # c: a report without "intervals" at all
    result = comparison.compare_sizes(**inputs, out_dir=tmp_path, all_sizes=["a", "b", "c"])
    assert result["error_bars"]["perplexity"] == ["a"] and result["error_bars"]["rouge_l"] == ["a"]
    a, b, c = result["rows"]
    assert a["intervals"]["perplexity"] == {"low": 2.8, "high": 3.3}
    assert b["intervals"]["perplexity"] is None and c["intervals"]["perplexity"] is None
    table = result["table_markdown"]
    assert "| 3.0000 (2.8000–3.3000) | 0.4000 (0.3500–0.4500) |" in table
    assert table.count("–") == 2  # b and c show the bare numbers


def test_benchmarks_sit_beside_the_metrics_with_their_stderr(tmp_path: Path) -> None:
    inputs = _inputs({"tiny": (5_182_976, 0.9), "ladder-1M": (1_018_112, 1.2)})
    benchmarks = {"tiny": {"lm_eval_version": "0.4.13", "tasks": {
        "exp1_answer_choice": {"metric": "acc", "value": 0.41, "stderr": 0.02, "chance": 0.25, "above_chance": True},
        "exp1_arithmetic_exact": {"metric": "exact_match", "value": 0.05, "stderr": None, "chance": 0.0,
                                  "above_chance": False}}}}
    result = comparison.compare_sizes(**inputs, benchmarks=benchmarks, out_dir=tmp_path, all_sizes=["tiny", "ladder-1M"])
    header, _, tiny, ladder = result["table_markdown"].splitlines()
    assert header.endswith("| exp1\\_answer\\_choice (acc) | exp1\\_arithmetic\\_exact (exact\\_match) |")
    assert tiny.endswith("| 0.4100 ± 0.0200 | 0.0500 |")  # no stderr: the value alone
    assert ladder.endswith("| n/a | n/a |")  # not benchmarked yet
    assert result["rows"][0]["benchmarks"]["exp1_answer_choice"] == {
        "metric": "acc", "value": 0.41, "stderr": 0.02, "chance": 0.25, "above_chance": True}
    assert result["rows"][1]["benchmarks"] == {}
    assert "0.4100 ± 0.0200" in (tmp_path / "comparison.md").read_text()


def test_the_asset_reads_every_sizes_files_and_states_the_fit_in_its_metadata(tmp_path: Path, dagster_instance) -> None:
    """size_comparison on files laid out as the upstream assets write them (no training here)."""
    from dagster import AssetKey, materialize

    from exp1_assets.defs.reporting_assets import size_comparison
    from exp1_assets.defs.store import ArtifactStore

    for size, n in (("ladder-1M", 1_018_112), ("ladder-2.5M", 2_510_592), ("tiny", 5_182_976)):
        checkpoint = tmp_path / "model_checkpoint" / size
        checkpoint.mkdir(parents=True)
        (checkpoint / "train_result.json").write_text(json.dumps({"param_count": n, "val_loss_after": 9.0 * n ** -0.15}))
        (checkpoint / "log_history.json").write_text("[]")
        report = tmp_path / "evaluation_report" / size
        report.mkdir(parents=True)
        (report / "report.json").write_text(json.dumps({"metrics": {"perplexity": 3.0},
                                                        "intervals": {"perplexity": {"low": 2.5, "high": 3.5}}}))
    (tmp_path / "benchmark_report" / "tiny").mkdir(parents=True)
    (tmp_path / "benchmark_report" / "tiny" / "benchmarks.json").write_text(json.dumps(
        {"tasks": {"exp1_answer_choice": {"metric": "acc", "value": 0.41, "stderr": 0.02}}}))
    result = materialize([size_comparison], instance=dagster_instance, resources={"store": ArtifactStore(root=str(tmp_path))})
    assert result.success
    event = dagster_instance.get_latest_materialization_event(AssetKey("size_comparison"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["scaling_fit"] == "L = 9 * N^(-0.1500) (least squares in log-log space, R^2 = 1.0000, n = 3 sizes)"
    assert (metadata["scaling_n"], round(metadata["scaling_alpha"], 9)) == (3, 0.15)
    assert set(metadata["scaling_residuals"]) == {"ladder-1M", "ladder-2.5M", "tiny"}
    assert "| 0.4100 ± 0.0200 |" in metadata["table"] and "3.0000 (2.5000–3.5000)" in metadata["table"]
    summary = json.loads((tmp_path / "size_comparison" / "comparison.json").read_text())
    assert summary["error_bars"]["perplexity"] == ["ladder-1M", "ladder-2.5M", "tiny"]
