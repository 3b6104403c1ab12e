"""Service processes put their threads in SCHED_BATCH (store.threadsched), each case in a
fresh interpreter: the policy outlives the call and is inherited by later threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux policy")

PROBE = """
import os, threading
from store import threadsched

def policy():
    return os.sched_getscheduler(0)

os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # whatever pytest runs under
seen = {}
before_ready, go = threading.Event(), threading.Event()

def early():
    before_ready.set()
    go.wait()
    seen["early"] = policy()

first = threading.Thread(target=early)
first.start()
before_ready.wait()
seen["done"] = threadsched.run_as_batch()
seen["main"] = policy()
go.set()
first.join()
later = threading.Thread(target=lambda: seen.__setitem__("later", policy()))
later.start()
later.join()
names = {os.SCHED_BATCH: "batch", os.SCHED_OTHER: "other"}
print(seen["done"], names[seen["main"]], names[seen["early"]], names[seen["later"]])
"""


def probe(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "STORE_SCHED"} | env
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_every_thread_running_and_started_later_is_batch() -> None:
    assert probe() == "True batch batch batch"


def test_store_sched_normal_keeps_the_usual_policy() -> None:
    assert probe(STORE_SCHED="normal") == "False other other other"
    assert probe(STORE_SCHED=" Normal\n") == "False other other other"


def test_the_policy_changes_nothing_else() -> None:
    # Same nice level and no real-time priority: only wakeup preemption differs.
    code = (
        "import os; from store import threadsched; n = os.getpriority(os.PRIO_PROCESS, 0); "
        "threadsched.run_as_batch(); "
        "print(os.sched_getscheduler(0) == os.SCHED_BATCH, "
        "os.getpriority(os.PRIO_PROCESS, 0) == n, os.sched_getparam(0).sched_priority)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "0"]
