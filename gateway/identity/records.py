"""The one way to change a stored record: read it, decide, compare-and-set, retry on conflict.

Every read-check-write of an account, project or key goes through ``change``. The record is
read from the store itself (never from a per-process cache), the caller's rule computes the
new document from exactly what it read, and ``Store.swap_record`` writes it only if nothing
else wrote in between; otherwise the rule runs again on the fresh document. So two writers
never lose each other's fields, and a rule that compares the current state (a tier that
only moves up, a project that is not already active) holds at the moment of the write.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from gateway.errors import Conflict
from gateway.metering.store import Store

Doc = dict[str, Any]
#: a rule: the current document (None: absent) -> the new one (None: absent); returning
#: its argument unchanged writes nothing; raising refuses the change
Rule = Callable[[Doc | None], Doc | None]

_ATTEMPTS = 64


class Busy(Conflict):
    code = "BUSY"


async def change(store: Store, kind: str, record_id: str, rule: Rule) -> tuple[Doc | None, bool]:
    """Apply ``rule`` to (kind, id) atomically; the document as it now stands and whether
    this call wrote it."""
    for attempt in range(_ATTEMPTS):
        current, version = await store.fetch_record(kind, record_id)
        wanted = rule(None if current is None else dict(current))
        if wanted == current:
            return current, False
        if await store.swap_record(kind, record_id, version, wanted):
            return wanted, True
        # another writer came first: back off a little (jittered, so racers spread out)
        await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
    raise Busy(f"{kind} {record_id} is changing too often to apply this change; retry")
