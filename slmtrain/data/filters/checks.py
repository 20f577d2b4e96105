"""Pre-flight check of a pipeline step: can it do its work here, before any stage runs?

A step whose library does not import, whose model file is missing or does not load, or that fails on a probe
document would otherwise fail (or, for extractors, remove every page) deep inside every task. The probe goes
through a copy of the step (nothing loaded here is shipped to the workers) without its exclusion writer.
"""

from __future__ import annotations

import copy

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter

from slmtrain.config import UserError
from slmtrain.data.filters.extractors import PROBE_PAGE, SandboxedExtractor

PROBE_TEXT = (
    "The program reads its settings from a plain text file when it starts. Each line holds one setting, written "
    "as a name, an equals sign and a value. Lines that begin with a hash sign are comments and are ignored. When "
    "a setting appears twice, the last value wins, and a file that cannot be read stops the program."
)


def check_step(name: str, step: PipelineStep) -> None:
    """Run a probe document through (a copy of) ``step``; raise UserError naming ``steps.NAME`` and the cause."""
    probe = copy.deepcopy(step)
    try:
        if isinstance(probe, BaseFilter):  # extractors too: their sandbox worker imports the library
            probe.exclusion_writer = None
            text = PROBE_PAGE if isinstance(probe, SandboxedExtractor) else PROBE_TEXT
            for _ in probe.run(iter([Document(text=text, id="probe")])):
                pass
        elif isinstance(probe, BaseFormatter):
            probe.format(PROBE_TEXT)
        elif isinstance(probe, MinhashDedupSignature):
            probe.get_shingles(PROBE_TEXT)
    except UserError as error:
        raise UserError(f"steps.{name}: {error}") from None
    except Exception as error:  # noqa: BLE001 - whatever stops the step is the one-line reason
        message = str(error).splitlines()[0] if str(error) else ""
        raise UserError(f"steps.{name} cannot run: {type(error).__name__}: {message}") from None
