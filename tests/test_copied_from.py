"""diffusers' `# Copied from` convention, checked against the installed diffusers as its `make fix-copies` check does:
a method marked `# Copied from diffusers.<module>.<Class>.<method>` must equal that method's source (after the
marker's `with A->B` replacements), so a copy cannot drift silently when diffusers changes."""

import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import synfer_diffusers

PACKAGE = Path(synfer_diffusers.__file__).parent
MARKER = re.compile(r"^(?P<indent>\s*)# Copied from (?P<target>diffusers\.[\w.]+)(?P<replace>\s+with\s+.*)?$")


def _markers():
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = MARKER.match(line)
            if match:
                yield pytest.param(path, number, lines, match, id=f"{path.relative_to(PACKAGE)}:{number + 1}")


def _copied_block(lines: list[str], start: int, indent: str) -> str:
    """The definition right after the marker: its lines up to the next line indented no deeper than `indent`."""
    block = [lines[start]]
    for line in lines[start + 1 :]:
        closing = re.match(re.escape(indent) + r"\)[^\n]*:$", line)  # the `) -> type:` of a signature
        if line.strip() and not line.startswith(indent + " ") and not closing:
            break
        block.append(line)
    while block and not block[-1].strip():
        block.pop()
    return textwrap.dedent("\n".join(block))


def _resolve(target: str):
    parts = target.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(target)


def test_the_package_has_copies_to_check():
    assert len(list(_markers())) >= 2


@pytest.mark.parametrize(("path", "number", "lines", "match"), list(_markers()))
def test_copied_from_matches_the_installed_diffusers(path, number, lines, match):
    ours = _copied_block(lines, number + 1, match["indent"])
    theirs = textwrap.dedent(inspect.getsource(_resolve(match["target"]))).rstrip()
    for pattern in re.findall(r"(\w+)->(\w+)", match["replace"] or ""):
        theirs = theirs.replace(*pattern)
    assert ours == theirs, f"{path.name}:{number + 1} differs from {match['target']}: run diffusers' copy again"
