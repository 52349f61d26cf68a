"""The access log writes in batches: one write per loop turn, a bounded buffer, flushed on close."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.accesslog import AccessLog


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def test_the_lines_of_one_loop_turn_go_out_together_after_it(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.open()
    for i in range(3):
        log.write(f'{{"n":{i}}}')
    assert _lines(path) == []  # nothing written on the request path
    await asyncio.sleep(0)
    assert _lines(path) == ['{"n":0}', '{"n":1}', '{"n":2}']
    log.close()


async def test_a_full_buffer_is_written_at_once_and_close_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), max_buffered=2)
    log.open()
    log.write("a")
    assert _lines(path) == []
    log.write("b")
    assert _lines(path) == ["a", "b"]  # bounded: never more than two lines held
    log.write("c")
    log.close()  # shutdown: what is buffered is not lost
    assert _lines(path) == ["a", "b", "c"]
    log.write("d")  # after close, nothing is kept or written
    await asyncio.sleep(0)
    assert _lines(path) == ["a", "b", "c"]
