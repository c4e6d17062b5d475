"""Write the table of bad inputs in docs/guides/bad-inputs.md from the tests.

Every test file that tries bad inputs declares a module-level ``CASES = [(entry point, kind of bad input,
what the user gets), ...]`` (three strings per row), built next to (or from) the parametrisation of the
tests themselves. This script collects every such ``CASES`` from ``tests/*.py`` and rewrites the block
between ``<!-- bad-inputs:begin -->`` and ``<!-- bad-inputs:end -->`` of the page: a count and one table
row per case. ``tests/test_bad_inputs_cli.py`` checks the page equals what this script writes, so the
table cannot drift from the tests.

    python scripts/bad_inputs_table.py            # rewrite the page
    python scripts/bad_inputs_table.py --check    # exit 1 if the page is stale
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "guides" / "bad-inputs.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


@dataclass(frozen=True)
class Case:
    entry: str
    kind: str
    outcome: str
    source: str  # the test file's name


def _declares_cases(path: Path) -> bool:
    """True if the file assigns ``CASES`` at module level to a list expression (not, e.g., a dict of fixtures)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return False
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "CASES" for t in targets) and node.value is not None:
            return isinstance(node.value, (ast.List, ast.ListComp, ast.BinOp))
    return False


def _is_rows(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(row, tuple) and len(row) == 3 and all(isinstance(x, str) for x in row) for row in value)


def collect(tests: Path = ROOT / "tests") -> list[Case]:
    """Every ``(entry point, kind, outcome)`` row of every ``tests/*.py`` ``CASES``, files in name order."""
    cases: list[Case] = []
    for path in sorted(Path(tests).glob("test_*.py")):
        if not _declares_cases(path):
            continue
        name = f"_bad_inputs_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses (and pickling) look their module up there
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]
        rows = getattr(module, "CASES", None)
        if not _is_rows(rows):
            raise ValueError(f"{path.name}: CASES must be a list of (entry point, kind, outcome) string triples")
        cases.extend(Case(*row, source=path.name) for row in rows)
    return cases


def _cell(text: str) -> str:
    """One table cell: whitespace collapsed, ``|`` escaped, and outside `code` spans ``[`` / ``]`` escaped
    (``a[name][field]`` would otherwise read as a cross-reference)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("[", "\\[").replace("]", "\\]")
    return "`".join(parts)


def table(cases: list[Case]) -> str:
    """The generated block (without the markers): the count and the table."""
    files = sorted({c.source for c in cases})
    lines = [
        f"The tests try **{len(cases)}** bad inputs ({len(files)} test files); none is silent: each row is a test "
        "that asserts what the user gets.",
        "",
        "| entry point | bad input | what the user gets | test |",
        "|---|---|---|---|",
    ]
    lines += [f"| {_cell(c.entry)} | {_cell(c.kind)} | {_cell(c.outcome)} | `tests/{c.source}` |" for c in cases]
    return "\n".join(lines)


def render(page: str, cases: list[Case]) -> str:
    """``page`` with the block between the markers replaced by `table` of ``cases``."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"page: expected one {BEGIN} ... {END} block")
    head, rest = page.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table(cases)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale (write nothing)")
    args = parser.parse_args(argv)
    cases = collect()
    page = PAGE.read_text(encoding="utf-8")
    new = render(page, cases)
    if args.check:
        if new != page:
            print(f"{PAGE} is stale: run python scripts/bad_inputs_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    print(f"{PAGE.relative_to(ROOT)}: {len(cases)} bad inputs from {len({c.source for c in cases})} test files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
