"""A run's result: the per-step table (in, kept, removed by reason, seconds) summed from the tasks' datatrove stats,
the totals that must balance, ``stats.json``, the terminal table and ``stats.png``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datatrove.pipeline.dedup.minhash import MinhashDedupFilter, MinhashDedupSignature
from datatrove.utils.stats import PipelineStats

from slmtrain.data.curate.config import Stage


@dataclass
class StepStats:
    """One row of the table: a step's documents in, kept and removed (by reason), and its summed task time."""

    step: str
    documents_in: int
    kept: int
    removed: int
    seconds: float
    removed_by_reason: dict[str, int] = field(default_factory=dict)
    rejected: int = 0  # the read row only: unreadable input
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class Totals:
    documents_in: int
    kept: int
    removed: int
    rejected: int

    @property
    def balanced(self) -> bool:
        return self.documents_in == self.kept + self.removed + self.rejected


@dataclass
class CurationStats:
    """The result of a curation run, as written to ``OUTPUT/stats.json``."""

    pipeline: str
    input: str
    output: str
    wall_seconds: float
    steps: list[StepStats]
    totals: Totals
    executor: str = "local"

    def step(self, name: str) -> StepStats:
        return next(row for row in self.steps if row.step == name)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "totals": {**dataclasses.asdict(self.totals),
                                                        "balanced": self.totals.balanced}}


def collect_stats(stages: list[Stage], output: Path, pipeline: str, source: str, seconds: float) -> CurationStats:
    """Per-step rows (in, kept, removed by reason, seconds) from the stages' datatrove stats, and the totals."""
    rows: list[StepStats] = []
    dedup_seconds = 0.0
    for stage in stages:
        step_stats = _stage_stats(stage, output)
        if not stage.rows:  # a MinHash bucket/cluster stage: its time goes to the dedup row
            dedup_seconds += sum(_seconds(s) for s in step_stats)
            continue
        for index, name in stage.rows.items():
            counts = step_stats[index]["stats"] if index < len(step_stats) else {}
            step_seconds = _seconds(step_stats[index]) if index < len(step_stats) else 0.0
            if name == "read":
                kept, rejected = _count(counts, "documents"), _count(counts, "rejected")
                rows.append(StepStats(name, kept + rejected, kept, 0, round(step_seconds, 3), rejected=rejected,
                                      rejected_by_reason=_by_prefix(counts, "rejected_")))
                continue
            if isinstance(stage.pipeline[index], MinhashDedupFilter):
                step_seconds, dedup_seconds = step_seconds + dedup_seconds, 0.0
            removed = _count(counts, "dropped")
            by_reason = _by_prefix(counts, "dropped_")
            if unexplained := removed - sum(by_reason.values()):  # the step's criterion, without a finer reason
                by_reason[name] = unexplained
            # steps that only rewrite text (pii) count 'total' but not 'forwarded'
            kept = _count(counts, "forwarded") if "forwarded" in counts else _count(counts, "total") - removed
            rows.append(StepStats(name, _count(counts, "total"), kept, removed, round(step_seconds, 3), by_reason))
        for index, step in enumerate(stage.pipeline[: len(step_stats)]):  # after the rows: the next dedup's time
            if isinstance(step, MinhashDedupSignature):  # the signatures, after the stage's writer: its time
                # covers the steps before it too (it pulls their documents), whose own times are subtracted; the
                # reads they do not time stay in it
                upstream = sum(_seconds(s) for s in step_stats[:index])
                dedup_seconds += max(0.0, _seconds(step_stats[index]) - upstream)
    totals = Totals(rows[0].documents_in, rows[-1].kept, sum(row.removed for row in rows), rows[0].rejected)
    return CurationStats(pipeline, source, str(output), round(seconds, 2), rows, totals)


def _stage_stats(stage: Stage, output: Path) -> list[dict]:
    """The stage's per-step stats summed over its tasks' own files: a resumed run counts the tasks of earlier runs,
    whichever executor ran them."""
    task_files = [output / "logs" / stage.name / "stats" / f"{rank:05d}.json" for rank in range(stage.tasks)]
    found = [PipelineStats.from_json(json.loads(path.read_text())) for path in task_files if path.is_file()]
    return [step.to_dict() for step in sum(found, start=PipelineStats()).stats]


def _seconds(step_stats: dict) -> float:
    timing = step_stats["time_stats"]  # a bare 0 when the step saw no documents
    return float(timing.get("total", 0.0) if isinstance(timing, dict) else timing)


def _count(counts: dict, key: str) -> int:
    value = counts.get(key, 0)
    return int(value["total"] if isinstance(value, dict) else value)


def _by_prefix(counts: dict, prefix: str) -> dict[str, int]:
    return {key.removeprefix(prefix): _count(counts, key) for key in counts if key.startswith(prefix)}


def format_stats(stats: CurationStats) -> str:
    """The table the command line prints: one row per step, then the totals and whether they balance."""
    lines = [f"{'step':<20} {'in':>9} {'kept':>9} {'removed':>9} {'seconds':>9}  removed by reason"]
    for row in stats.steps:
        reasons = row.rejected_by_reason if row.step == "read" else row.removed_by_reason
        named = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
        lines.append(f"{row.step:<20} {row.documents_in:>9} {row.kept:>9} {row.removed:>9} {row.seconds:>9.2f}  "
                     + (f"(rejected: {named})" if row.step == "read" and named else named))
    t = stats.totals
    lines.append(f"documents in {t.documents_in} = kept {t.kept} + removed {t.removed} + rejected {t.rejected}"
                 + ("" if t.balanced else "  (UNBALANCED: see logs/)"))
    return "\n".join(lines)


def plot_stats(stats: CurationStats, path: Path) -> None:
    """Kept and removed documents per step beside each step's summed task time."""
    import matplotlib  # only here: the rest of curation never needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = stats.steps
    names = [row.step for row in rows]
    fig, (counts_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 2), sharey=True)
    counts_ax.barh(names, [row.kept for row in rows], label="kept")
    counts_ax.barh(names, [row.removed for row in rows], left=[row.kept for row in rows], label="removed")
    counts_ax.set_xlabel("documents")
    counts_ax.legend()
    counts_ax.invert_yaxis()
    time_ax.barh(names, [row.seconds for row in rows], color="gray")
    time_ax.set_xlabel("seconds (summed over tasks)")
    fig.suptitle(f"{stats.pipeline}: kept {stats.totals.kept} of {stats.totals.documents_in}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
