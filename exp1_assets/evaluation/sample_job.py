"""The sampling job: `python -m exp1_assets.evaluation.sample_job spec.json`.

Every prompt is answered at every temperature, `variations` times, with seeded nucleus sampling;
the set is analysed per category and written as samples.jsonl, samples.md and samples.html.
Seeds: variation v at temperature index t uses `seed + 1000 * (t * variations + v)`, so rerunning
the same spec reproduces the same samples.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from exp1_assets.evaluation.job_common import (
    JsonSpec, load_checkpoint, md_metadata, require_non_negative_int, require_path, require_positive,
    resolve_device, run_rank0_job,
)
from exp1_assets.runtime import Reporter


@dataclass(frozen=True)
class SampleSpec(JsonSpec):
    checkpoint_path: str
    output_dir: str
    run_dir: str
    prompts: tuple[dict, ...] | None = None  # inline {"category", "prompt"} rows
    prompts_path: str | None = None  # or a JSONL file of them; neither: the default set
    temperatures: tuple[float, ...] = (0.7, 0.85, 1.0)
    variations: int = 3
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 64  # rows decoding together (bench/RESULTS.md: 64 beat 32 on CPU)
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("checkpoint_path", "output_dir", "run_dir"):
            require_path(name, getattr(self, name))
        if self.prompts is not None and self.prompts_path is not None:
            raise ValueError("prompts: give inline prompts or prompts_path, not both")
        if self.prompts is not None and (not isinstance(self.prompts, tuple) or not self.prompts):
            raise ValueError(f"prompts: must be a non-empty tuple of {{category, prompt}} rows, got {self.prompts!r}")
        if not isinstance(self.temperatures, tuple) or not self.temperatures:
            raise ValueError(f"temperatures: must be a non-empty tuple, got {self.temperatures!r}")
        for t in self.temperatures:
            require_positive("temperatures", t)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        for name in ("variations", "repetition_penalty", "max_new_tokens", "batch_size"):
            require_positive(name, getattr(self, name))
        require_non_negative_int("seed", self.seed)


def generate_samples(model: Any, tokenizer: Any, prompts: list[dict], spec: SampleSpec,
                     *, reporter: Reporter) -> list[dict[str, Any]]:
    from exp1_assets.evaluation.generation import generate_batched

    messages = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
    samples = []
    for t_index, temperature in enumerate(spec.temperatures):
        for variation in range(spec.variations):
            seed = spec.seed + 1000 * (t_index * spec.variations + variation)
            started = time.perf_counter()
            gens = generate_batched(model, tokenizer, messages, max_new_tokens=spec.max_new_tokens,
                                    batch_size=spec.batch_size, do_sample=True, temperature=temperature,
                                    top_p=spec.top_p, repetition_penalty=spec.repetition_penalty, seed=seed)
            reporter.log(f"T={temperature} variation {variation}: {len(gens)} samples in "
                         f"{time.perf_counter() - started:.1f}s")
            samples += [{"category": p["category"], "prompt": p["prompt"], "temperature": temperature,
                         "variation": variation, "seed": seed, "text": g.text, "n_tokens": g.n_tokens,
                         "stopped": g.stopped} for p, g in zip(prompts, gens)]
    return samples


def sample(spec: SampleSpec, *, reporter: Reporter) -> list[dict[str, Any]]:
    from exp1_assets.evaluation.prompts import load_prompts
    from exp1_assets.evaluation.reports import analysis_markdown, samples_preview_markdown, write_samples
    from exp1_assets.evaluation.sample_analysis import analyze

    prompts = load_prompts(inline=list(spec.prompts) if spec.prompts is not None else None,
                           path=spec.prompts_path)
    device = resolve_device(spec.device)
    model, tokenizer = load_checkpoint(spec.checkpoint_path, device=device)
    reporter.log(f"sampling {len(prompts)} prompts x {len(spec.temperatures)} temperatures x "
                 f"{spec.variations} variations on {device}")
    samples = generate_samples(model, tokenizer, prompts, spec, reporter=reporter)
    analysis = analyze(samples)
    write_samples(spec.output_dir, samples=samples, analysis=analysis, title=f"Samples: {spec.checkpoint_path}")
    overall = analysis[-1]  # the "all" row
    reporter.report_materialization(metadata={
        "num_samples": len(samples), "num_prompts": len(prompts),
        "stopped_fraction": float(overall["stopped"]), "repetitive_fraction": float(overall["repetitive"]),
        "mean_words": float(overall["words_mean"]),
        "analysis": md_metadata(analysis_markdown(analysis)),
        "preview": md_metadata(samples_preview_markdown(samples)),
    })
    return samples


def main(argv: list[str] | None = None) -> None:
    run_rank0_job(sys.argv[1:] if argv is None else argv, module="exp1_assets.evaluation.sample_job",
                  spec_class=SampleSpec, work=sample)


if __name__ == "__main__":
    main()
