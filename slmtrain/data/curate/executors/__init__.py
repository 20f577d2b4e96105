"""Where a run's stages execute, one after the other: ``local.py`` (a process pool on this machine), ``ray.py`` (a
Ray cluster started for the run or joined) and ``slurm.py`` (job arrays chained by dependencies), each through
datatrove's executor of that name; ``common.py`` holds what they share."""
