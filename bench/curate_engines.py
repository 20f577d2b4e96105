"""Curation throughput on each engine: the local executor, a local Ray cluster and the single-node Slurm cluster of
.ci/slurm-up.sh (which must be running: eval "$(.ci/slurm-up.sh)"), with 1 and 2 workers, on the same pages.

    python bench/curate_engines.py [pages=600] [files=4]

The pages are the embedded demo corpus, split over ``files`` input files (one task each). Every run goes to a new
output folder (nothing resumed) and reads the same pages; each configuration runs once, in the order
local-1, ray-1, slurm-1, local-2, ray-2, slurm-2. Prints documents/second (wall time, engine start-up included) and
the ratio to the local executor with the same workers. One thread per process (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slmtrain.config import split_args  # noqa: E402
from slmtrain.data.demo import write_demo_documents  # noqa: E402
from slmtrain.data.curate import run_pipeline  # noqa: E402

ENGINES = {"local": {}, "ray": {"cluster": {"num_cpus": os.cpu_count(), "include_dashboard": False}},
           "slurm": {"cluster": {"partition": "cpu"}}}


def main() -> None:
    _, args = split_args(sys.argv[1:])
    n_pages, n_files = int(args.get("pages", 600)), int(args.get("files", 4))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = (write_demo_documents(work / "all", max_docs=n_pages) / "demo-00000.jsonl").read_bytes().splitlines()
        (work / "pages").mkdir()
        for k in range(n_files):
            (work / "pages" / f"part{k}.jsonl").write_bytes(b"\n".join(lines[k::n_files]) + b"\n")
        rates: dict[tuple[str, int], float] = {}
        for workers in (1, 2):
            for engine, overrides in ENGINES.items():
                started = time.perf_counter()
                stats = run_pipeline("fineweb", work / "pages", work / f"{engine}-{workers}", overrides,
                                     executor=engine, workers=workers, wait=True)
                rates[engine, workers] = stats.totals.documents_in / (time.perf_counter() - started)
        print(f"fineweb pipeline, {n_pages} demo pages in {n_files} files, {os.cpu_count()} cores")
        print(f"{'engine':<8} {'workers':>7} {'docs/s':>8} {'vs local':>9}")
        for (engine, workers), rate in rates.items():
            print(f"{engine:<8} {workers:>7} {rate:>8.2f} {rate / rates['local', workers]:>8.2f}x")


if __name__ == "__main__":
    main()
