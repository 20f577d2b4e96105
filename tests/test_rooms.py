"""Rooms import one way: a module of slmtrain imports only from its own room and the rooms below it in ROOMS (the
order README's Developing section states; a test below keeps the two the same). Lazy imports inside functions
count too: they are the same dependency, only later."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "slmtrain"
# top to bottom; __main__ and the package's __init__ are the entry and the root
ROOMS = ("cli", "orchestrate", "serve", "collab", "adapt", "eval", "train", "scaling", "data", "slurm", "artifacts",
         "tokenizer", "hardware", "fresh_process", "model", "config")


def room_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slmtrain":
            names = [node.module] if node.module != "slmtrain" else [f"slmtrain.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        rooms |= {n.split(".")[1] for n in names if n.startswith("slmtrain.")}
    return rooms


def test_no_room_imports_from_a_room_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = room_of(path)
        if room not in ROOMS:
            continue
        for other in imported_rooms(path) & set(ROOMS):
            if ROOMS.index(other) < ROOMS.index(room):
                upward.append(f"{path.relative_to(REPO_ROOT)} ({room}) imports {other}")
    assert not upward, "imports up the room order:\n" + "\n".join(upward)


def test_every_room_is_in_the_order():
    rooms = {room_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert rooms <= set(ROOMS), f"rooms missing from ROOMS: {sorted(rooms - set(ROOMS))}"


def test_the_order_is_the_one_readme_states():
    readme = (REPO_ROOT / "README.md").read_text()
    stated = readme[readme.index("Rooms, top to bottom:"):].split("(", 1)[0]
    assert tuple(re.findall(r"`([a-z_]+)`", stated)) == ROOMS
