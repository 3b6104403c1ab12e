"""How many object copies a PG lacks, and how many it keeps away from where placement
wants them — the degraded and misplaced counts of `store status`, as Ceph shows them.

Counted by the PG's primary from what it knows: the PG's objects (its own copy is complete:
peering made it so), the acting set against the pool's size, and for each replica still
being recovered the objects left to push to it (all of them until its round has listed
them). A copy is *misplaced* rather than *degraded* while a former member that was complete
when the interval began still holds it and still receives writes (``+remapped``): the data
has its copies, only not on the daemons placement names.
"""

from __future__ import annotations

from collections.abc import Iterable


def copy_shortfall(
    objects: int, size: int, acting: int, pending: Iterable[int | None], interim: int
) -> tuple[int, int]:
    """(degraded, misplaced) object copies of one PG.

    `objects`: objects in the PG; `size`: copies the pool wants; `acting`: daemons in the
    acting set, primary included; `pending`: for each acting replica not yet up to date,
    objects it still lacks (None: not known yet, so all); `interim`: former members kept
    complete until the move is done.
    """
    objects = max(0, objects)
    absent = max(0, size - acting) * objects
    lacking = sum(objects if left is None else min(max(0, left), objects) for left in pending)
    short = absent + lacking
    misplaced = min(short, max(0, interim) * objects)
    return short - misplaced, misplaced
