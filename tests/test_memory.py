"""asr_ctc.memory: training runs with mimalloc, whose RSS plateaus (docs/long-runs.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from asr_ctc import memory
from asr_ctc.memory import ALLOCATOR_ENV, chosen_allocator, mimalloc_library

_PROBE = (
    "import os; from asr_ctc.memory import reexec_with_allocator, allocator_in_use; "
    "reexec_with_allocator(); print(allocator_in_use(), os.environ.get('LD_PRELOAD', ''))"
)


def _probe(**env):
    full = {k: v for k, v in os.environ.items() if k not in (ALLOCATOR_ENV, "LD_PRELOAD")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, env={**full, **env}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_a_command_re_executes_itself_once_with_mimalloc():
    if mimalloc_library() is None:
        pytest.skip("cmeel-mimalloc is not installed")
    in_use, preload = _probe()
    assert in_use == "mimalloc"
    assert preload.split(":").count(mimalloc_library()) == 1  # once: the re-executed process did not loop
    assert _probe(**{ALLOCATOR_ENV: "system"}) == ["system"]


def test_allocator_choice_from_the_environment(monkeypatch):
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    assert chosen_allocator() == "mimalloc"
    monkeypatch.setenv(ALLOCATOR_ENV, " System ")
    assert chosen_allocator() == "system"
    monkeypatch.setenv(ALLOCATOR_ENV, "jemalloc")
    with pytest.raises(ValueError, match="expected one of mimalloc, system, got 'jemalloc'"):
        chosen_allocator()
    monkeypatch.setattr(memory.os, "execv", lambda *a: pytest.fail("must not re-execute"))
    with pytest.raises(ValueError):
        memory.reexec_with_allocator()


def test_no_wheel_or_already_preloaded_means_no_re_execution(monkeypatch):
    monkeypatch.setattr(memory.os, "execv", lambda *a: pytest.fail("must not re-execute"))
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    monkeypatch.setattr(memory, "mimalloc_library", lambda: None)
    memory.reexec_with_allocator()
    monkeypatch.setattr(memory, "mimalloc_library", lambda: "/x/libmimalloc.so")
    monkeypatch.setenv("LD_PRELOAD", "/elsewhere/libmimalloc.so.3")
    memory.reexec_with_allocator()
    assert os.environ["LD_PRELOAD"] == "/elsewhere/libmimalloc.so.3"


def test_a_failed_re_execution_keeps_the_run_going(monkeypatch):
    def fail(*args):
        raise OSError("no exec here")

    monkeypatch.setattr(memory.os, "execv", fail)
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    monkeypatch.setattr(memory, "mimalloc_library", lambda: "/x/libmimalloc.so")
    monkeypatch.setenv("LD_PRELOAD", "/y/libother.so")
    if sys.platform.startswith("linux"):
        memory.reexec_with_allocator()
    assert os.environ["LD_PRELOAD"] == "/y/libother.so"
