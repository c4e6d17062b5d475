"""The docs cannot drift from the code: the site builds with ``mkdocs build --strict`` (broken links,
broken cross-references and docstring problems fail it), every fenced ``python`` block of ``docs/**/*.md``
and ``README.md`` runs, and every module of the package has a place in the API reference.

Conventions: the ``python`` blocks of one page run in order in one fresh namespace (so a page reads
top to bottom like a session); a block preceded by a ``<!-- no-run -->`` line is shown but not run (for
examples that need real SD weights or long runs). Blocks run offline, in a temporary working
directory, on one thread.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """The fenced code blocks of a markdown file whose info string starts with ``python`` (or ``py``):
    ``(line number, code, runs)``; ``runs`` is False when the last non-blank line before the fence is
    ``<!-- no-run -->``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        start, body, i = i, [], i + 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        lang = info.split()[0].lstrip("{.").rstrip("}") if info else ""
        if lang in ("python", "py"):
            before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            blocks.append((start + 1, "\n".join(body) + "\n", before != NO_RUN))
    return blocks


PAGES = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
RUNNABLE = [p for p in PAGES if any(runs for _, _, runs in python_blocks(p))]


def test_block_parser_sees_the_convention(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```python\na = 1\n```\n\n<!-- no-run -->\n```python\nraise SystemExit\n```\n"
                    "\n```bash\necho no\n```\n\n    ```py\n    b = a + 1\n    ```\n", encoding="utf-8")
    assert [(code, runs) for _, code, runs in python_blocks(page)] == [
        ("a = 1\n", True), ("raise SystemExit\n", False), ("b = a + 1\n", True)]


def test_mkdocs_build_strict(tmp_path):
    """The whole site builds offline with ``--strict`` (also renders the API reference from the docstrings)."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    cmd = [str(mkdocs)] if mkdocs.exists() else [sys.executable, "-m", "mkdocs"]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    proc = subprocess.run([*cmd, "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "api" / "link" / "index.html").exists()


def test_mkdocs_config_is_offline():
    """No plugin that fetches anything at build time (Material's social cards fetch fonts, privacy fetches assets)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    plugins = re.findall(r"^\s*-\s*([\w/.-]+)\s*:?\s*$", text.split("plugins:", 1)[1].split("\n\n", 1)[0], re.M)
    assert plugins, "no plugins section found"
    assert not {"social", "privacy", "material/social", "material/privacy", "offline"} & set(plugins), plugins


def test_every_module_is_in_the_api_reference():
    """Each module of the package (but ``__main__`` shims) is rendered by a ``::: module`` line of docs/api/."""
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^:::\s*([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M))
    modules = set()
    for path in (ROOT / "splitldm").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__" or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    missing = sorted(modules - documented)
    assert not missing, f"modules without a `::: name` line in docs/api/*.md: {missing}"
    stale = sorted(documented - modules)
    assert not stale, f"docs/api/*.md documents modules that do not exist: {stale}"


def test_architecture_page_states_the_enforced_layers():
    """docs/architecture.md quotes the layers of .importlinter (the contract tests/test_layers.py checks)."""
    config = ROOT / ".importlinter"
    if not config.exists():
        pytest.skip(".importlinter not present")
    parser = configparser.ConfigParser()
    parser.read(config, encoding="utf-8")
    section = next(s for s in parser.sections() if parser[s].get("type") == "layers")
    layers = [line.strip() for line in parser[section]["layers"].strip().splitlines() if line.strip()]
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- layers -->\s*```text\n(.*?)```", page, re.S)
    assert m, "docs/architecture.md has no `<!-- layers -->` block"
    assert [line.strip() for line in m[1].splitlines() if line.strip()] == layers


def test_api_index_lists_the_public_api():
    """docs/api/index.md links every curated top-level name to the module that defines it."""
    import splitldm

    page = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    linked = dict(re.findall(r"\[`(\w+)`\]\[([\w.]+)\]", page))
    curated = [name for name in splitldm.__all__ if name not in ("zoo", "__version__")]
    assert sorted(linked) == sorted(curated)
    for name in curated:
        module = getattr(splitldm, name).__module__
        assert linked[name] == f"{module}.{name}", (name, linked[name], module)


def test_readme_links_resolve():
    """README.md's relative links (to docs/*.md, so they work on GitHub) point at files that exist."""
    targets = re.findall(r"\]\(((?!https?:|#)[^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert targets
    missing = sorted({t for t in targets if not (ROOT / t).exists()})
    assert not missing, missing


def test_names_and_paths_in_the_docs_exist():
    """Every dotted ``splitldm.x.y`` name the docs mention imports (module or attribute), and every repository
    path they mention (``configs/...``, ``bench/...``, ``scripts/...``, ``tests/...``, ``splitldm/...``) exists."""
    import importlib

    text = {p: p.read_text(encoding="utf-8") for p in PAGES}
    unknown = []
    for name in sorted({m for t in text.values() for m in re.findall(r"(?<![\w/.-])splitldm(?:\.[A-Za-z_]\w*)+", t)}):
        parts, obj = name.split("."), None
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            unknown.append(name)
    assert not unknown, f"names in the docs that do not exist: {unknown}"
    paths = {m for t in text.values()
             for m in re.findall(r"(?<![\w/.-])((?:configs|bench|scripts|tests|splitldm)/[\w./-]*\w)", t)}
    missing = sorted(p for p in paths if not re.search(r"-v\d+$", p) and not (ROOT / p).exists())
    assert not missing, f"paths in the docs that do not exist: {missing}"


def test_doc_images_are_the_shipped_ones():
    """docs/img/ copies the sample grids of the shipped checkpoints (the zoo page shows them)."""
    for name in ("tiny", "tiny-lcm"):
        shipped = ROOT / "splitldm" / "checkpoints" / name / "samples.png"
        assert (DOCS / "img" / f"{name}-samples.png").read_bytes() == shipped.read_bytes()


def test_docstrings_parse_cleanly():
    """Google-style docstring sections the API reference cannot parse (the build does not fail on them:
    ``warnings: false`` in mkdocs.yml); reported as warnings so the lines that would be dropped get fixed."""
    import logging
    import warnings

    import griffe

    problems: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            problems.append(record.getMessage())

    logger, handler = logging.getLogger("griffe"), Collect(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        package = griffe.load("splitldm", search_paths=[str(ROOT)], resolve_aliases=False)
        stack, seen = [package], set()
        while stack:
            obj = stack.pop()
            if obj.path in seen:
                continue
            seen.add(obj.path)
            if obj.docstring is not None:
                obj.docstring.parse("google", warn_unknown_params=False, warn_missing_types=False)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
    finally:
        logger.removeHandler(handler)
    assert seen
    for problem in problems:
        warnings.warn(f"docstring: {problem}", UserWarning, stacklevel=1)


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_code_examples_run(page, tmp_path, monkeypatch):
    """Every runnable ``python`` block of the page, in order, in one fresh namespace."""
    monkeypatch.chdir(tmp_path)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace = {"__name__": f"docs_{page.stem}"}
    try:
        for line, code, runs in python_blocks(page):
            if not runs:
                continue
            try:
                # Padded so that a traceback's line numbers are the page's own.
                exec(compile("\n" * line + code, str(page), "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{page.relative_to(ROOT)}, block at line {line} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(threads)
