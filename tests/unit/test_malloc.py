"""The C allocator's thresholds (store.malloc), each case in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "from store import malloc; print(malloc.tune(), malloc.tune())"


def tune_in_child(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_thresholds_are_set_once_under_glibc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert tune_in_child(env) == "True True"


def test_a_process_given_its_own_malloc_tunables_keeps_them() -> None:
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}
    assert tune_in_child(env) == "False False"


def test_the_command_line_sets_them() -> None:
    probe = (
        "import sys; from store import malloc; from store.cli import main\n"
        "try:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(malloc._tuned, file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stderr.strip().endswith("True")


def test_uninitialized_buffers_have_the_size_asked_and_take_writes() -> None:
    from store.malloc import UNINITIALIZED_MIN, uninitialized

    small = uninitialized(100)
    assert small == bytearray(100)  # small ones are zeroed: the call would cost more
    for size in (UNINITIALIZED_MIN, 4 * 1024 * 1024 + 3):
        buffer = uninitialized(size)
        assert type(buffer) is bytearray and len(buffer) == size
        buffer[:] = b"\x5a" * size
        assert buffer.count(0x5A) == size
        del buffer[size // 2 :]  # resizable like any bytearray
        assert len(buffer) == size // 2
