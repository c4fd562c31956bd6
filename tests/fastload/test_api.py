"""The top-level names the README tells users to catch or construct are importable from ``fastload``."""

from __future__ import annotations

import fastload
from fastload import errors


def test_errors_users_catch_are_exported_and_keep_their_hierarchy():
    for name in ("FastloadError", "ConfigError", "StoreError", "StoreNotFoundError", "SchemaError", "CodecError",
                 "ChunkReadError", "ChunkTimeoutError", "LoaderClosedError"):
        assert name in fastload.__all__ and getattr(fastload, name) is getattr(errors, name), name
    assert issubclass(fastload.ChunkTimeoutError, fastload.ChunkReadError)  # `except ChunkReadError` still catches


def test_every_error_the_readme_names_is_exported():
    """``except fastload.WorkerError:`` as the README writes it must not itself raise AttributeError."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    named = set(re.findall(r"\bfastload\.([A-Z]\w*Error)\b", readme))
    assert "WorkerError" in named
    for name in sorted(named):
        assert name in fastload.__all__ and getattr(fastload, name) is getattr(errors, name), name
