"""What a command printed, as the tests read it."""

from __future__ import annotations


def diagnostics(stderr: str) -> str:
    """A command's stderr without the ``config: {...}`` line every command prints first (its resolved options):
    what is left is the error, which must be one line."""
    lines = stderr.splitlines(keepends=True)
    return "".join(lines[1:] if lines and lines[0].startswith("config: {") else lines)
