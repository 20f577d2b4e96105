"""Curation pipelines: ``data_filters/NAME.yaml`` -> datatrove stages -> kept/removed/rejected + a per-step table.

A declaration lists ``steps`` as an ordered mapping ``name: {type: TYPE, param: value, ...}`` (``type`` defaults
to the name; ``enabled: false`` drops a step). Parameters are those of the step's class, checked by name, so a
typo is an error naming the valid keys. ``minhash`` splits the pipeline into stages (datatrove's MinHash: the
documents kept so far go to ``work/`` and are signed as they are written, then bucketed, clustered and filtered).

Output layout (the tokenizer and the trainer rely on it)::

    OUTPUT/kept/*.jsonl.gz              kept documents (text, id, metadata)
    OUTPUT/removed/<step>/*.jsonl.gz    every removed document, with metadata.filter_reason
    OUTPUT/rejected/*.jsonl.gz          unreadable input (corrupt line, bad UTF-8, giant, ...) with its reason
    OUTPUT/stats.json, stats.png        per-step in / kept / removed (by reason) / seconds, and the totals
    OUTPUT/curate.log                   datatrove's task logging and warnings (the terminal shows progress only)
    OUTPUT/logs/<stage>/                datatrove logs and completion markers (a re-run skips finished tasks)

Every step is checked before any stage runs (its library imports, its model loads, a probe document goes through
it), and removals for failures rather than a step's criterion (extraction timeouts, dead workers, ...) past
``max_failure_share`` of a step's input end the run with an error unless ``allow_mass_removal`` is set.

The modules, in the order a run uses them:

    run.py        run_pipeline, the one entry point: load, build, check, execute, collect
    config.py     PipelineConfig (the declaration), Stage (one executor's worth of work), loading
    steps.py      the step registry: each step type's class and what the stage builder does for it
    source.py     the input: a path, hf://DATASET or the demo corpus; its format and its reader
    stages.py     the stage graph: steps in order, a MinHash closing a stage into bucket and cluster stages
    executors/    local.py, ray.py, slurm.py: where the stages' tasks run
    stats.py      the per-step table, stats.json and stats.png from the tasks' datatrove stats
"""

from slmtrain.data.curate.run import run_pipeline

__all__ = ["run_pipeline"]
