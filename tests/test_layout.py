"""The code's layout rules, read from the source (no imports): every module of the packages opens
with a docstring that states its job, no function is longer than 60 lines, and the code explains
itself rather than citing issue numbers or a paper summary the repository does not hold."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contamination", "sweeps", "analysis")
MAX_LINES = 60
# an issue number ("issue 26", "issue's", "#26") or the paper summary kept outside the repository
CITATION = re.compile(r"\bissues?\b|#\d+\b|PAPER\.md", re.IGNORECASE)


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method, nested ones included, longer than `limit` lines
    (from its `def` to its last line, decorators left out)."""
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def citations(source: str) -> list[tuple[int, str]]:
    """(line, text) of each comment or docstring that cites an issue or PAPER.md."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING) and CITATION.search(tok.string):
            if tok.type == tokenize.COMMENT or tok.string.lstrip("rbuRBU").startswith(('"""', "'''")):
                found.append((tok.start[0], CITATION.search(tok.string).group(0)))
    return found


def test_the_checks_find_what_they_look_for():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))  # with its `def`, one line too many
    assert long_functions(f"def f():\n{body}\n") == [("f", MAX_LINES + 1)]
    assert long_functions("class A:\n    def g(self):\n        return 1\n") == []
    assert citations('"""Fixed in issue 26."""\nx = 1  # see #12\ny = "issue"  # a string, not a comment\n') \
        == [(1, "issue"), (2, "#12")]
    assert citations('"""The model (docs/simulator.md)."""\n') == []


def test_every_module_opens_with_a_docstring():
    missing = [str(p.relative_to(ROOT)) for p in modules() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


def test_no_function_is_longer_than_60_lines():
    long = {str(p.relative_to(ROOT)): found for p in modules() if (found := long_functions(p.read_text()))}
    assert long == {}


def test_code_explains_itself_without_citing_issues():
    cited = {str(p.relative_to(ROOT)): found for p in modules() if (found := citations(p.read_text()))}
    assert cited == {}
