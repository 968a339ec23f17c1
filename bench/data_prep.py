"""Data preparation at OpenHermes scale: raw JSON -> splits -> tokenizer -> packed, stage by stage.

    python bench/data_prep.py --rows 100000 300000        # the sizes to run (files generated, cached)

For each size: generate an OpenHermes-shaped JSON array (make_openhermes_like.py, cached under
bench/out/), then run each library stage in its own subprocess, which reports its wall time and
its own peak RSS (getrusage RUSAGE_SELF ru_maxrss):

  ingest     exp1_assets.data.sources.ingest_conversations(source="local", path=<file>.json)
  split      exp1_assets.data.splits.split_conversations (0.98/0.01/0.01)
  tokenizer  exp1_assets.data.tokenizer.train_bpe_tokenizer (on a sample of --tokenizer-sample rows)
  pack       exp1_assets.data.packing.pack_dataset (train + validation, --max-length)
  raw_encode tokenizers' encode_batch alone on the same ChatML texts (same batching), only the
             encode calls timed: the ceiling for tokenize+pack (target: pack >= 0.75x of it)

Prints a table per size and seconds per 1k rows across sizes (flat = linear, no quadratic stage).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

STAGES = ("ingest", "split", "tokenizer", "pack", "raw_encode")
SIDE_BY_SIDE_ROUNDS = 5


# ---- stages: each runs in a fresh interpreter (`--stage NAME --work DIR`) ---------------------

def run_stage(stage: str, work: Path, args) -> dict:
    started = time.perf_counter()
    import exp1_assets.data.packing, transformers  # noqa: F401,E401 - import cost kept out of the stage time
    info: dict = {"import_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    if stage == "ingest":
        from exp1_assets.data.sources import ingest_conversations

        result = ingest_conversations(source="local", path=str(args.corpus), hub_id="", max_samples=None,
                                      seed=0, out_dir=work / "raw")
        info = {"rows": result.rows, "quarantined": result.quarantined}
    elif stage == "split":
        from exp1_assets.data.splits import SplitSpec, split_conversations

        result = split_conversations(conversations_path=work / "raw" / "conversations.parquet",
                                     out_dir=work / "splits", spec=SplitSpec(fractions=(0.98, 0.01, 0.01)))
        info = {"counts": result.counts}
    elif stage == "tokenizer":
        from exp1_assets.data.tokenizer import train_bpe_tokenizer

        result = train_bpe_tokenizer(train_path=work / "splits" / "train.parquet", out_dir=work / "tokenizer",
                                     vocab_size=args.vocab_size, sample_rows=args.tokenizer_sample)
        info = {"vocab_size": result.vocab_size, "bytes_per_token": result.bytes_per_token}
    elif stage == "pack":
        from exp1_assets.data.packing import pack_dataset

        stats = pack_dataset(tokenizer_dir=work / "tokenizer", splits_dir=work / "splits", out_dir=work / "packed",
                             max_length=args.max_length)
        # Tokens tokenized (the throughput's numerator), packed or counted as carrying no loss.
        info = {"tokens": sum(s.tokens + s.tokens_without_loss for s in stats.values()),
                "tokens_without_loss": sum(s.tokens_without_loss for s in stats.values()),
                "blocks": sum(s.blocks for s in stats.values()),
                "padding_fraction_train": stats["train"].padding_fraction}
    elif stage == "raw_encode":
        info = raw_encode(work)
    elif stage == "side_by_side":
        info = side_by_side(work, rows=args.side_by_side, max_length=args.max_length)
    else:
        raise ValueError(f"--stage: {stage!r} is not one of {STAGES}")
    info["seconds"] = time.perf_counter() - started  # the library call alone
    info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return info


def raw_encode(work: Path) -> dict:
    """encode_batch alone, same texts and batch size as the packer; only the encode calls timed."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from exp1_assets.data.chat import render_chatml
    from exp1_assets.data.packing import ENCODE_BATCH, configure_tokenizer_threads

    configure_tokenizer_threads(None)
    backend = AutoTokenizer.from_pretrained(str(work / "tokenizer")).backend_tokenizer
    encode_seconds, tokens = 0.0, 0
    for split in ("train", "validation"):
        parquet = pq.ParquetFile(work / "splits" / f"{split}.parquet")
        for batch in parquet.iter_batches(batch_size=20_000, columns=["messages"]):
            texts = [render_chatml(m) for m in batch.column("messages").to_pylist()]
            for start in range(0, len(texts), ENCODE_BATCH):
                began = time.perf_counter()
                encodings = backend.encode_batch(texts[start:start + ENCODE_BATCH], add_special_tokens=False)
                encode_seconds += time.perf_counter() - began
                tokens += sum(len(e.ids) for e in encodings)
    return {"tokens": tokens, "encode_seconds": encode_seconds}


def side_by_side(work: Path, *, rows: int, max_length: int) -> dict:
    """pack_split vs encode_batch alone on the same first `rows` train rows, alternating, in one process.

    Stage times above come from different minutes of a shared machine; this ratio does not.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from exp1_assets.data.chat import render_chatml
    from exp1_assets.data.packing import ENCODE_BATCH, configure_tokenizer_threads, pack_split

    configure_tokenizer_threads(None)
    sample = work / f"side_by_side_{rows}.parquet"
    first = next(pq.ParquetFile(work / "splits" / "train.parquet").iter_batches(batch_size=rows))
    rows = first.num_rows  # the split may hold fewer
    pq.write_table(pa.Table.from_batches([first]), sample)
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    times: dict[str, list[float]] = {"pack_split": [], "encode_batch": []}
    tokens = 0
    for round_index in range(SIDE_BY_SIDE_ROUNDS):
        for side in (list(times) if round_index % 2 == 0 else list(reversed(times))):
            started = time.perf_counter()
            if side == "pack_split":
                packed = pack_split(tokenizer=tokenizer, conversations_path=sample, out_path=work / "sbs.arrow",
                                    max_length=max_length)
                tokens = packed.tokens + packed.tokens_without_loss
            else:  # reading + rendering included here too: the same work minus labels and packing
                messages = pq.read_table(sample, columns=["messages"]).column("messages").to_pylist()
                texts = [render_chatml(m) for m in messages]
                for start in range(0, len(texts), ENCODE_BATCH):
                    tokenizer.backend_tokenizer.encode_batch(texts[start:start + ENCODE_BATCH], add_special_tokens=False)
            times[side].append(time.perf_counter() - started)
    seconds = {side: _common.median(t) for side, t in times.items()}
    return {"rows": rows, "tokens": tokens, "times": times, "median_s": seconds,
            "ratio": seconds["encode_batch"] / seconds["pack_split"]}


# ---- driver ----------------------------------------------------------------------------------

def run_size(rows: int, args) -> dict:
    from make_openhermes_like import write_corpus

    corpus = _common.OUT_DIR / f"openhermes_like_{rows}.json"
    generated = None
    if not corpus.is_file():
        print(f"generating {corpus} ...", flush=True)
        generated = write_corpus(rows=rows, out=corpus)
    work = _common.OUT_DIR / f"data_prep_{rows}"
    stages = {}
    for stage in STAGES:
        cached = work / f"stage_{stage}.json"  # each finished stage's numbers, for --resume
        if args.resume and cached.is_file():
            stages[stage] = json.loads(cached.read_text())
            print(f"  {rows:>9,} {stage:10s} (resumed from {cached.name})", flush=True)
            continue
        cmd = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--corpus", str(corpus),
               "--max-length", str(args.max_length), "--vocab-size", str(args.vocab_size),
               "--tokenizer-sample", str(args.tokenizer_sample)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"stage {stage} at {rows} rows failed:\n{proc.stderr[-3000:]}")
        stages[stage] = json.loads(proc.stdout.strip().splitlines()[-1])
        stages[stage]["process_seconds"] = time.perf_counter() - started  # with interpreter startup
        cached.write_text(json.dumps(stages[stage]))
        print(f"  {rows:>9,} {stage:10s} {stages[stage]['seconds']:8.1f}s  peak RSS "
              f"{stages[stage]['peak_rss_mb']:7.0f} MB", flush=True)
    if args.side_by_side:
        stages["side_by_side"] = json.loads(subprocess.run(
            [sys.executable, __file__, "--stage", "side_by_side", "--work", str(work), "--corpus", str(corpus),
             "--max-length", str(args.max_length), "--side-by-side", str(args.side_by_side)],
            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        sbs = stages["side_by_side"]
        print(f"  {rows:>9,} side by side on {sbs['rows']:,} rows: pack_split {sbs['median_s']['pack_split']:.1f}s, "
              f"encode_batch alone {sbs['median_s']['encode_batch']:.1f}s -> x{sbs['ratio']:.2f}", flush=True)
    pack, raw = stages["pack"], stages["raw_encode"]
    return {
        "rows": rows, "corpus_bytes": corpus.stat().st_size, "generated": generated, "stages": stages,
        "pack_tokens_per_s": pack["tokens"] / pack["seconds"],
        "raw_encode_tokens_per_s": raw["tokens"] / raw["encode_seconds"],
        "pack_vs_raw_encode": (pack["tokens"] / pack["seconds"]) / (raw["tokens"] / raw["encode_seconds"]),
        "total_seconds": sum(stages[s]["seconds"] for s in STAGES if s != "raw_encode"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=4096, help="the tokenizer asset's default")
    parser.add_argument("--tokenizer-sample", type=int, default=200_000, help="the tokenizer asset's default")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 500 rows, vocab 600")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished stages' numbers (bench/out/data_prep_<rows>/stage_*.json)")
    parser.add_argument("--side-by-side", type=int, default=5_000,
                        help="rows for the alternating pack_split vs encode_batch comparison (0: skip)")
    parser.add_argument("--stage", choices=(*STAGES, "side_by_side"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.work, args)))
        return 0
    if args.quick:
        args.rows, args.vocab_size, args.tokenizer_sample, args.side_by_side = [500], 600, 500, 200

    name = "data_prep" + ("_quick" if args.quick else "_" + "_".join(str(r) for r in args.rows))
    results = []
    for rows in args.rows:
        results.append(run_size(rows, args))
        _common.write_result(name, {"settings": vars(args), "sizes": results})  # kept if a later size is cut short
    table = []
    for r in results:
        for stage in STAGES:  # side_by_side is reported on its own line below
            s = r["stages"][stage]
            table.append({"rows": r["rows"], "stage": stage, "seconds": s["seconds"],
                          "s_per_1k_rows": 1000 * s["seconds"] / r["rows"], "peak_rss_mb": s["peak_rss_mb"]})
    print()
    _common.print_table(table, ["rows", "stage", "seconds", "s_per_1k_rows", "peak_rss_mb"])
    print()
    for r in results:
        print(f"{r['rows']:>9,} rows ({r['corpus_bytes'] / 1e9:.2f} GB): pipeline {r['total_seconds']:.0f}s, "
              f"tokenize+pack {r['pack_tokens_per_s']:,.0f} tok/s vs encode_batch alone "
              f"{r['raw_encode_tokens_per_s']:,.0f} tok/s = x{r['pack_vs_raw_encode']:.2f} (target >= 0.75; "
              f"stages timed minutes apart)")
        if "side_by_side" in r["stages"]:
            sbs = r["stages"]["side_by_side"]
            print(f"          side by side, alternating, {sbs['rows']:,} rows: pack_split / encode_batch alone "
                  f"= x{sbs['ratio']:.2f}")
    print(f"wrote {_common.write_result(name, {'settings': vars(args), 'sizes': results})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
