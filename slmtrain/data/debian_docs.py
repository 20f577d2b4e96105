"""Real HTML pages to curate: the documentation packages of Debian, fetched with ``apt-get download``.

About 5,300 pages over four packages (Python's library reference, SQLite's C API and release notes, Django's
documentation, and the Debian Administrator's Handbook in some 25 languages): real navigation, tables, code and
non-English prose, for the extraction tests and ``bench/curate_throughput.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from slmtrain.config import UserError

PACKAGES = ("python3.11-doc", "sqlite3-doc", "python-django-doc", "debian-handbook")
MIN_PAGE_BYTES = 2_000  # smaller files are redirects and frames


def fetch_debian_pages(work: Path, n_pages: int | None = None, packages: Sequence[str] = PACKAGES) -> Path:
    """Download and unpack ``packages`` under ``work``; copy ``n_pages`` of their HTML pages (evenly spaced over the
    sorted list; None: all) into ``work/pages`` and return that folder."""
    debs, root, pages = work / "debs", work / "root", work / "pages"
    debs.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(["apt-get", "download", *packages], cwd=debs, capture_output=True, text=True)
    if download.returncode != 0:
        last = (download.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"apt-get download {' '.join(packages)} failed ({last}); it needs apt's package lists "
                        "(apt-get update) and a Debian mirror")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    html = sorted(p for p in root.rglob("*.htm*") if p.is_file() and p.stat().st_size > MIN_PAGE_BYTES)
    if n_pages is not None:
        html = html[:: max(1, len(html) // n_pages)][:n_pages]
    pages.mkdir(exist_ok=True)
    for i, path in enumerate(html):
        shutil.copy(path, pages / f"{i:05d}_{path.name}")
    return pages
