"""Service processes run in ``SCHED_BATCH``: a thread woken up does not preempt the one running.

Linux favours a thread that wakes from sleep over the thread that woke it, so the woken
one often takes the waker's core at once — in the middle of the system call that woke it
(a lock released, a datagram sent), while the waker still holds Python's GIL. If the woken
thread is of the same process it can do nothing without that GIL, and both wait: a storage
daemon's event loop hands each batch of writes to its writer thread by releasing a lock,
and py-spy put 9 % of the daemon's GIL-holding time in that one release during 4 KiB
writes. Between processes the waker is only delayed, and with it every thread of it that
waits for its GIL.

``SCHED_BATCH`` marks a thread as not interactive: the scheduler does not give it that
preference when it wakes, and otherwise shares the CPU as for any thread of its nice level.
Where a core is idle the woken thread runs there at once, as before; where both are busy it
runs when the running thread blocks or its slice ends. Where the daemons, the gateways and
their clients share two cores, small writes and reads gained 6 to 25 % by it
(docs/benchmarks.md, "Fifth round"). The policy is per thread and threads
inherit it from the one that starts them, so it is set once, early, for every thread then
running. ``STORE_SCHED=normal`` in the environment keeps the usual policy.
"""

from __future__ import annotations

import os

ENV = "STORE_SCHED"


def run_as_batch() -> bool:
    """Put every thread of this process (and so the threads they start) in
    ``SCHED_BATCH``; whether it was done. A no-op where the platform lacks the policy or
    ``STORE_SCHED=normal`` is set."""
    if os.environ.get(ENV, "").strip().lower() == "normal":
        return False
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return False
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # 0: the calling thread
    done = False
    for tid in threads:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            done = True
        except OSError:
            pass  # a thread that ended meanwhile, or a policy refused
    return done
