"""The test helper ``subprocs.start_when_ready`` reads a child's stdout and stderr from the start: a child that
prints more than a pipe buffer (64 KiB) before it is ready no longer blocks on the full pipe until the guard, and
``communicate()`` still returns every character it printed (reference: the exact strings the child wrote)."""

from __future__ import annotations

import textwrap

import pytest

from .subprocs import start_when_ready

MB = 1 << 20

# prints 1 MiB to stdout and 1 MiB to stderr (lines of a known pattern), then says it is ready, then exits 0 or,
# with "fail", exits 3 without a word of readiness
CHATTY = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    ready, fail = Path(sys.argv[1]), sys.argv[2] == "fail"
    line = "0123456789abcdef" * 4 + "\\n"  # 65 characters
    n = (1 << 20) // len(line) + 1
    sys.stdout.write("".join(f"{i:08d}" + line for i in range(n)))
    sys.stdout.flush()
    sys.stderr.write("".join(f"E{i:07d}" + line for i in range(n)))
    sys.stderr.flush()
    if fail:
        sys.exit(3)
    ready.with_suffix(".part").write_text("ready")
    os.replace(ready.with_suffix(".part"), ready)
""")


def _expected(prefix: str) -> str:
    line = "0123456789abcdef" * 4 + "\n"
    n = MB // len(line) + 1
    return "".join((f"{i:08d}" if prefix == "" else f"E{i:07d}") + line for i in range(n))


def test_a_child_printing_a_megabyte_before_ready_gets_ready_and_every_character_comes_back(tmp_path):
    """Before: the child blocked writing its 65th KiB (no one read the pipe) and the helper raised at its guard."""
    script, ready = tmp_path / "chatty.py", tmp_path / "ready"
    script.write_text(CHATTY)
    p = start_when_ready(script, [str(ready), "ok"], ready, "the chatty child", 60)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0
    assert len(out) > MB and out == _expected("")
    assert len(err) > MB and err == _expected("E")


def test_a_chatty_child_that_exits_before_ready_is_named_with_its_status_and_stderr(tmp_path):
    """Before: the child never reached its exit (blocked on the full stdout pipe); the helper killed it at the
    guard and reported "rc None" and no stderr."""
    script, ready = tmp_path / "chatty.py", tmp_path / "ready"
    script.write_text(CHATTY)
    with pytest.raises(AssertionError, match=r"(?s)the chatty child did not get ready: rc 3\n.*E0016131") as e:
        start_when_ready(script, [str(ready), "fail"], ready, "the chatty child", 60)
    assert str(e.value).endswith(_expected("E")[-2000:])
