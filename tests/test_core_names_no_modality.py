"""The core (``bind/``, the ``anchorbind`` package minus its plugins) names no built-in modality.

Everything the core needs to know about a modality is declared by the plugin (``encodes_text``,
``prompt_templates``, ``perceives``, ``example_inputs``); a string constant naming ``text``,
``audio`` or ``depth`` in core code means the core special-cases a built-in plugin, which a
third-party plugin could not get. Docstrings may use them as examples.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "bind"
BUILT_IN = ("text", "audio", "depth", "thermal", "imu")
WORD = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(BUILT_IN) + r")(?![A-Za-z0-9_])", re.IGNORECASE)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """``id`` of every module/class/function docstring constant (and attribute docstrings)."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for index, stmt in enumerate(body):
            is_string = (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            )
            if not is_string:
                continue
            # the leading docstring of a module/class/function, or a bare string statement
            # (an attribute docstring after an assignment): documentation, never code
            if index == 0 or isinstance(node, (ast.Module, ast.ClassDef)):
                ids.add(id(stmt.value))
    return ids


def offenders(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: 'constant'`` for every non-docstring string constant naming a built-in modality.

    Covers plain constants, f-string parts (``ast.JoinedStr`` holds them as constants) and dict
    keys alike, since all are ``ast.Constant`` nodes.
    """
    tree = ast.parse(source, filename)
    docstrings = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in docstrings:
            continue
        if WORD.search(node.value):
            found.append(f"{filename}:{node.lineno}: {node.value!r}")
    return found


def test_detector_catches_literals_fstrings_and_keys_but_not_docstrings():
    code = '''
"""Module docstring naming text and audio."""
def f(x):
    """Docstring: depth maps."""
    a = "text"
    b = f"{x}/audio"
    c = {"depth": 1}
    d = "textual contexts"
    return a, b, c, d
class C:
    """Class docstring: text."""
    attr = 1
    """Attribute docstring: audio."""
'''
    found = offenders(code)
    assert len(found) == 3, found
    assert any("'text'" in f for f in found)
    assert any("/audio" in f for f in found)
    assert any("'depth'" in f for f in found)


def test_core_has_no_built_in_modality_literal():
    found = []
    for path in sorted(CORE.rglob("*.py")):
        found += offenders(path.read_text(encoding="utf-8"), str(path.relative_to(CORE.parent)))
    assert not found, (
        "the core names a built-in modality outside docstrings; declare what it needs on the "
        "plugin (encodes_text, prompt_templates, perceives) instead:\n  " + "\n  ".join(found)
    )
