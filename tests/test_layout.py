"""The layout's promises, checked on the tree itself: imports point one way inside `pars`, no file edits the
interpreter's import path, no source file passes 600 lines, the top README's module table matches the package,
and every relative link in the documentation resolves."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("pars", "benchmarks", "experiments", "data_preprocess", "predictor_train", "predictor_serving",
               "scripts", "tests")
MAX_LINES = 600
IMPORT_PATH = re.compile(r"\bsys\." + "path")  # spelled apart, so that this file does not match itself

# What each part of the package may import (besides itself): everything points down to `common`, and
# nothing below the web layer imports it (the gateway's in-process scorer uses the service's engine and
# batcher, never its app).
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "model": {"common"},
    "eval": {"common", "data", "model"},
    "train": {"common", "data", "model", "eval"},
    "serving": {"common", "model"},
    "gateway": {"common", "serving"},
    "retrain": {"common", "data", "model", "eval", "train"},
}


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_every_package_part_is_known():
    parts = {p.name for p in (ROOT / "pars").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts == set(ALLOWED)


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_point_one_way(part):
    wrong = []
    for path in python_files(f"pars/{part}"):
        for module in imported_modules(path):
            names = module.split(".")
            if names[0] != "pars" or len(names) < 2 or names[1] in (part, "__version__"):
                continue
            if names[1] not in ALLOWED[part] or module.startswith("pars.serving.app"):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_file_edits_the_import_path():
    offenders = [str(p.relative_to(ROOT)) for p in python_files(*SOURCE_DIRS)
                 if IMPORT_PATH.search(p.read_text(encoding="utf-8"))]
    assert not offenders


def test_no_source_file_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in python_files(*SOURCE_DIRS)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long


def test_readme_module_table_is_the_package():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(pars/[\w/]+\.py)`", readme))
    modules = {str(p.relative_to(ROOT)) for p in python_files("pars") if p.name != "__init__.py"}
    assert not listed - modules, f"listed but missing: {sorted(listed - modules)}"
    assert not modules - listed, f"not in the README's table: {sorted(modules - listed)}"


def markdown_files() -> list[Path]:
    skip = {".venv", ".venv-vllm", ".git", "outputs", "runs"}
    return sorted(p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts[:1]))


def test_relative_links_in_the_docs_resolve():
    broken = []
    for md in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (md.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
