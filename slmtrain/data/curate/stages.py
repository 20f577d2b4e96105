"""The stage graph of a run: the reader, then the declared steps in order, then the writer of ``kept/``.

Most pipelines are one stage. A step whose kind ends the stage (MinHash) closes it into ``work/stage_k``, adds
datatrove's bucket and cluster stages, and opens the next stage with the dedup filter over what was kept so far.
"""

from __future__ import annotations

import functools
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.typeshelper import Languages

from slmtrain.data.curate.config import PipelineConfig, Stage
from slmtrain.data.curate.source import build_reader, detect_format
from slmtrain.data.curate.steps import STEPS, build_step, construct, removed_writer
from slmtrain.data.filters.checks import check_step
from slmtrain.data.filters.inputs import RecordingJsonlReader
from slmtrain.data.filters.tokenization import shared_tokenizer


def build_stages(config: PipelineConfig, source: str, output: Path, workers: int) -> list[Stage]:
    """The stages to run one after the other, each with its checks (run before any stage starts) and its
    preparations (run just before it: a model trained on the spot)."""
    input_format = detect_format(config, source)
    reader, n_files = build_reader(config, input_format, source, output)
    tasks = max(1, min(n_files, workers * config.tasks_per_worker))
    failure_limit = None if config.allow_mass_removal else config.max_failure_share
    stages: list[Stage] = []
    current = Stage("filter_1", [reader], {0: "read"}, tasks)
    for name, spec in config.steps.items():
        params = dict(spec)
        kind = STEPS[params.pop("type", name)]
        if not params.pop("enabled", True):
            continue
        if kind.extracts and input_format not in ("html", "warc"):
            continue  # text is already extracted
        if kind.ends_stage:
            k = len(stages) // 3 + 1  # this is the k-th MinHash: it reads what stage k kept
            closed, current = minhash_stages(current, k, name, construct(name, kind.cls, params), output, tasks,
                                             config.max_doc_chars)
            stages += closed
            continue
        trainer = kind.trainer if "train" in params else None
        if trainer is not None:
            current.before.append(trainer(name, params.pop("train"), params, output))
        step = build_step(name, kind, params, output, failure_limit)
        # a model trained on the spot exists only once its stage is about to run
        (current.checks if trainer is None else current.before).append(functools.partial(check_step, name, step))
        current.rows[len(current.pipeline)] = name
        current.pipeline.append(step)
    current.pipeline.append(JsonlWriter(str(output / "kept")))
    return [*stages, current]


class FreshJsonlWriter(JsonlWriter):
    """A JsonlWriter whose task first deletes the file an interrupted run of the same task left: datatrove opens it
    only at the first document, so a re-run that kept nothing would leave the old documents there, to be read back
    by the dedup stage without signatures."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        stale = self._get_output_filename(Document(text="", id=""), rank)
        if self.output_folder.exists(stale):
            self.output_folder.rm(stale)
        return super().run(data, rank, world_size)


def minhash_stages(current: Stage, k: int, name: str, config: MinhashConfig, output: Path, tasks: int,
                   max_doc_chars: int) -> tuple[list[Stage], Stage]:
    """Close the current stage into ``work/stage_k``, add datatrove's MinHash bucket and cluster stages, and open
    the next stage with the dedup filter over what the current one kept.

    The signatures are computed in the current stage, right after its documents are written, rather than in a stage
    of their own that reads them back: no pool of workers starts only to read, parse and import spaCy again. Rank
    r's document indices are then those of the file rank r wrote, which is what the dedup filter's reader reads at
    rank r (``rank_file``)."""
    kept_so_far, minhash = output / "work" / f"stage_{k}", output / "work" / f"minhash_{k}"
    writer = FreshJsonlWriter(str(kept_so_far))
    signature = MinhashDedupSignature(output_folder=str(minhash / "signatures"), config=config,
                                      language=shared_tokenizer(Languages.english))
    current.pipeline += [writer, signature]
    current.checks.append(functools.partial(check_step, name, signature))
    buckets = Stage(f"minhash_{k}_buckets", [MinhashDedupBuckets(
        input_folder=str(minhash / "signatures"), output_folder=str(minhash / "buckets"), config=config)],
        {}, config.num_buckets)
    cluster = Stage(f"minhash_{k}_cluster", [MinhashDedupCluster(
        input_folder=str(minhash / "buckets"), output_folder=str(minhash / "remove"), config=config)], {}, 1)
    reread = RecordingJsonlReader(str(kept_so_far), max_doc_chars=max_doc_chars,
                                  rank_file=writer.output_filename.template)
    dedup = MinhashDedupFilter(input_folder=str(minhash / "remove"), exclusion_writer=removed_writer(output, name))
    return [current, buckets, cluster], Stage(f"filter_{k + 1}", [reread, dedup], {1: name}, tasks)
