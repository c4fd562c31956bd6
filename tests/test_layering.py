"""Imports flow one way: model never imports fastload/profiling; fastload never imports model/profiling;
fastload.pump imports nothing from the package; fastload.sampling does not import fastload.store."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        pkg = pkg.rsplit(".", 1)[0] + "._"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: -node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _modules(package: str):
    for p in sorted((ROOT / package).rglob("*.py")):
        yield p, _imports(p)


def _hits(imports: set[str], banned: str) -> list[str]:
    return sorted(i for i in imports if i == banned or i.startswith(banned + "."))


def test_model_is_a_leaf():
    for path, imports in _modules("model"):
        assert not _hits(imports, "fastload") and not _hits(imports, "profiling"), path


def test_fastload_does_not_import_model_or_profiling():
    for path, imports in _modules("fastload"):
        assert not _hits(imports, "model") and not _hits(imports, "profiling"), path


def test_pump_imports_nothing_from_the_package():
    imports = _imports(ROOT / "fastload" / "pump.py") if (ROOT / "fastload" / "pump.py").exists() else set()
    assert not _hits(imports, "fastload"), imports


def test_sampling_does_not_import_store_or_loader():
    for path, imports in _modules("fastload/sampling"):
        for banned in ("fastload.store", "fastload.reader", "fastload.loader", "fastload.plan"):
            assert not _hits(imports, banned), (path, banned)
