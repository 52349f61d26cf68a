"""The event loop the benchmark's servers run on: the one `gateway serve` uses."""

from __future__ import annotations

import asyncio


def new_loop() -> asyncio.AbstractEventLoop:
    """The same event loop `gateway serve` runs on, so the comparison is of the code alone."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
