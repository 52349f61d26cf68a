"""The Redis store: one Lua round trip per decision, shared by every worker and replica.

Store URLs (``--store``)::

    redis://[:password@]host:port/db          a single server (db defaults to 0)
    rediss://[:password@]host:port/db         the same over TLS; add ?ssl_ca_certs=/ca.pem
                                              for a private CA
    unix:///path/to/redis.sock?db=0           a single server on a unix socket
    redis+sentinel://[:password@]host:port,host:port/service_name/db
                                              the primary the sentinels name ``service_name``
                                              (the password is the primary's); failovers
                                              are followed by redis-py
    redis+cluster://host:port,host:port       a Redis Cluster, from any of its nodes

Metering runs as Lua scripts (``gateway/metering/lua/*.lua``), loaded once with SCRIPT LOAD
and called by EVALSHA; when Redis answers NOSCRIPT (a restart or a failover to a node that
never saw them) they are loaded again and the call repeated. Every key comes from
``gateway.metering.keys``; an account's meter keys share one hash tag, so a decision stays in
one Cluster slot. Windows are computed inside the script from Redis server time, unless a
Clock is injected (tests), in which case its ``now`` is passed along.

Every command runs under a budget of ``timeout_ms``; any Redis failure (down, slow, out of
memory, cluster down) leaves this module as ``StoreUnavailable``. A decision that raised is
never charged, even if Redis runs it later: each carries a deadline in Redis time and an
id that is voided after giving up (``late.py``). Records change by compare-and-set
(``swap.lua``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from yarl import URL

from gateway.aio import LoopLag, exchange_budget
from gateway.errors import StoreUnavailable
from gateway.metering import rates
from gateway.metering.clock import Clock, SystemClock
from gateway.metering.keys import (
    decision_key,
    meter_key,
    rate_key,
    record_key,
    sequence_key,
    set_key,
)
from gateway.metering.late import MARKER_TTL_MS, LateDecisions
from gateway.metering.pipelining import AtSend, Pipeliner, resolve
from gateway.metering.store import Charge, Decision, Granted, Lease, MeterState
from gateway.metering.windows import SOURCE_TTL, window_span, window_ttl

T = TypeVar("T")

_SCRIPTS = ("consume", "peek", "set_usage", "release", "read", "swap", "void", "lease")
_SYSTEM = SystemClock()
_POOL_SIZE = 64  # connections per process; Redis runs one command at a time anyway
_CLOSE_SETTLE_SECONDS = 5.0  # how long closing waits for voids still owed (late.py)


def script_source(name: str) -> str:
    """The text Redis runs for script ``name``: the shared windows prelude, then its body."""
    lua = resources.files("gateway.metering").joinpath("lua")
    prelude = lua.joinpath("windows.lua").read_text(encoding="utf-8")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return prelude + "\n" + body


def _addresses(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port in a store URL, got {part!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def check_db(url: str) -> None:
    """Raise ValueError when ``url`` names a database that is not a number.

    redis-py reads ``redis://host/abc`` as database 0 without a word, so a typo would put
    two deployments' counters in one database."""
    scheme, _, rest = url.partition("://")
    rest = rest.rpartition("@")[2]  # a password may hold anything
    if scheme in ("redis", "rediss"):
        db = rest.partition("?")[0].partition("/")[2]
    elif scheme == "redis+sentinel":
        db = rest.partition("?")[0].partition("/")[2].partition("/")[2]
    elif scheme == "redis+cluster":
        db = rest.partition("?")[0].partition("/")[2]
        if db.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only database 0, got /{db} in the store URL")
        return
    else:
        return  # unix:// gives the database as ?db=N, which redis-py checks itself
    db = db.rstrip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"the database in a store URL is a number such as /0, got /{db}")


def connect(url: str, *, timeout_ms: int) -> tuple[Any, Any, list[Any]]:
    """The client for a store URL, a client for pub/sub, and any other clients to close.

    On a Cluster pub/sub goes through a plain client of one node; with Sentinel the clients
    that ask the sentinels for the primary are closed with the store.
    """
    check_db(url)
    seconds = timeout_ms / 1000
    # retries stay inside the budget: the caller's asyncio.timeout bounds the whole command,
    # so a retry with backoff would only ever be cut off half way
    # A read is bounded by the command's budget (RedisStore._run), not by the socket: redis-py's
    # own timeouts fire while a busy loop has not yet read an answer that arrived.
    # Its socket timeouts stay as a backstop for what runs outside that budget.
    common: dict[str, Any] = {
        "socket_timeout": max(seconds * 20, 5.0),
        "socket_connect_timeout": max(seconds * 8, 2.0),
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        "health_check_interval": 0,
    }
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss", "unix"):
        # a bounded pool that waits for a free connection, rather than failing a burst of
        # concurrent requests with "Too many connections" as the default pool does; one more
        # than the commands in flight (RedisStore._slots), for the pub/sub subscription
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=_POOL_SIZE + 1, timeout=seconds, **common
        )
        single: Any = aioredis.Redis.from_pool(pool)
        return single, single, []
    if scheme == "redis+sentinel":
        rest = url.partition("://")[2]
        hosts, _, path = rest.partition("/")
        service, _, db = path.partition("/")
        if not service:
            raise ValueError(f"a Sentinel URL names its service: {url!r}")
        parsed = URL("redis://" + hosts.split(",")[0] + "/" + path)
        password = unquote(parsed.password) if parsed.password else None
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            _addresses(hosts.rpartition("@")[2]),
            sentinel_kwargs={"socket_timeout": seconds, "socket_connect_timeout": seconds},
            password=password,
            db=int(db or 0),
            **common,
        )
        primary: Any = sentinel.master_for(service)
        return primary, primary, list(sentinel.sentinels)
    if scheme == "redis+cluster":
        nodes = [ClusterNode(host, port) for host, port in _addresses(url.partition("://")[2])]
        cluster: Any = RedisCluster(startup_nodes=nodes, max_connections=_POOL_SIZE, **common)
        host, port = _addresses(url.partition("://")[2])[0]
        # classic PUBLISH reaches every node of a cluster, so any one node can be listened to
        listener = aioredis.Redis(host=host, port=port, **common)
        return cluster, listener, [listener]
    raise ValueError(
        f"unsupported store {url!r}: expected memory, redis://, rediss://, unix://, "
        "redis+sentinel:// or redis+cluster://"
    )


class RedisStore:
    """A Store on Redis (single server, Sentinel or Cluster); see the module docstring."""

    def __init__(self, url: str, *, clock: Clock | None = None, timeout_ms: int = 250) -> None:
        self._client, self._listener, self._others = connect(url, timeout_ms=timeout_ms)
        self._clock = clock
        self._guessed: tuple[float, float, list[str]] | None = None  # (start, end, args)
        self._budget = timeout_ms / 1000
        self._sources = {name: script_source(name) for name in _SCRIPTS}
        self._shas: dict[str, str] = {}
        # a Cluster client learns the slot map on first use; concurrent first commands would
        # each start that discovery and close one another's connections, so it runs once
        self._discovered = not isinstance(self._client, RedisCluster)
        self._discovery = asyncio.Lock()
        # Commands in flight are capped at the pool size so a burst waits for a connection
        # (within its budget) instead of failing with "too many connections", which the
        # Cluster client does rather than wait
        self._slots = asyncio.Semaphore(_POOL_SIZE)
        self._lag = LoopLag()  # time this process's loop was late: not the store's
        self._failures = 0  # commands failed so far: a change tells waiters to give up
        # scripts issued in one loop turn share one write (pipelining.py); a Cluster client
        # would have to split each batch by node, so there every script is sent on its own
        self._pipeliner = (
            None if isinstance(self._client, RedisCluster) else Pipeliner(self._client, self._run)
        )
        # decisions answered late apply nothing (late.py); voids owed run in the background
        self._late = LateDecisions(self._budget, void=self._void)
        self._background: set[asyncio.Task[None]] = set()

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(
        self,
        call: Callable[[], Awaitable[T]],
        connect: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """One command under the budget, with Redis's failures translated where they enter.

        The budget measures the store: it starts once this command holds a connection slot
        and is cut off only if no answer has arrived by then (``exchange_budget``), so the
        wait for a slot or for this process's busy event loop is never blamed on Redis. The
        wait for a slot is bounded by the per-worker cap on requests in flight instead
        (``max_in_flight``); ``connect``, if given, takes a pooled connection before the
        budget starts. Commands still waiting when one fails give up at once: the
        store is about to be marked degraded, and they would only each wait their budget.
        """
        queued_at = self._failures
        try:
            async with self._slots:
                if self._failures != queued_at:
                    raise StoreUnavailable("the store failed while this command waited for it")
                if connect is not None:
                    await connect()
                async with exchange_budget(self._budget, self._lag):
                    if not self._discovered:
                        async with self._discovery:
                            if not self._discovered:
                                await self._client.initialize()
                                self._discovered = True
                    return await call()
        except TimeoutError as exc:
            self._failures += 1
            raise StoreUnavailable(
                f"the store did not answer within {self._budget * 1000:.0f} ms"
            ) from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failures += 1
            raise StoreUnavailable(f"the store failed: {type(exc).__name__}: {exc}") from exc

    async def _load(self, name: str) -> str:
        sha: str = await self._client.script_load(self._sources[name])
        self._shas[name] = sha
        return sha

    async def _load_shared(self, name: str) -> str:
        """SCRIPT LOAD in the next pipelined batch (a burst's first calls all need it)."""
        sha = str(await self._command("SCRIPT LOAD", self._sources[name]))
        self._shas[name] = sha
        return sha

    async def _command(self, *args: Any) -> Any:
        """One command, in the next pipelined batch when there is a pipeliner."""
        if self._pipeliner is None:
            return await self._run(lambda: self._client.execute_command(*args))
        try:
            return await self._pipeliner.execute(*args)
        except redis.exceptions.NoScriptError:
            raise  # not a failure: _script loads the script again
        except redis.exceptions.RedisError as exc:  # this command's own error reply
            self._failures += 1
            raise StoreUnavailable(f"the store failed: {type(exc).__name__}: {exc}") from exc

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._pipeliner is None:
            return await self._run(lambda: self._evalsha(name, keys, args))
        sha = self._shas.get(name) or await self._load_shared(name)
        try:
            return await self._command("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # Redis restarted or failed over and lost its script cache: load and repeat
            sha = await self._load_shared(name)
            return await self._command("EVALSHA", sha, len(keys), *keys, *args)

    async def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        args = resolve(args)  # under the budget already: a deadline starts now
        sha = self._shas.get(name) or await self._load(name)
        try:
            return await self._client.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # Redis restarted or failed over and lost its script cache: load and repeat
            sha = await self._load(name)
            return await self._client.evalsha(sha, len(keys), *keys, *args)

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock.now())

    def _guesses(self) -> list[str]:
        """This process's guess of the month and day windows, for the consume script.

        Computing a window in Lua costs a decision as much as a write; the script takes a
        guess instead when its own ``now`` (Redis server time) falls inside it, so windows
        still come from the server's clock and a skewed gateway changes nothing.
        """
        now = (self._clock or _SYSTEM).now()
        cached = self._guessed
        if cached is None or not cached[0] <= now < cached[1]:
            month, month_start, month_reset = window_span("month", now)
            day, day_start, day_reset = window_span("day", now)
            args = [f":{month}", f"{month_start:.0f}", f"{month_reset:.0f}"]
            args += [f":{day}", f"{day_start:.0f}", f"{day_reset:.0f}"]
            cached = self._guessed = (day_start, day_reset, args)
        return cached[2]

    @staticmethod
    def _base(account_id: str, charge: Charge) -> str:
        if charge.rate is not None:
            return rate_key(account_id, charge.meter, charge.scope_id)
        return meter_key(account_id, charge.meter, charge.scope_id, None)

    @staticmethod
    def _ttl(charge: Charge) -> int:
        return window_ttl(charge.period) if charge.period is not None else 0

    def _states(self, raw: Sequence[Any], charges: Sequence[Charge]) -> tuple[MeterState, ...]:
        out = []
        local_now = (self._clock or _SYSTEM).now()
        for index, charge in enumerate(charges):
            key, used, reset, packaged, over = raw[5 * index : 5 * index + 5]
            if charge.rate is not None:  # TAT and the script's now (Redis time), in µs
                out.append(rates.state(str(key), int(used), int(reset), charge, local_now))
                continue
            reset_at = None if int(reset) < 0 else float(reset)
            out.append(
                MeterState(
                    str(key),
                    int(used),
                    charge.limit,
                    reset_at,
                    charge.package,
                    int(packaged),
                    int(over),
                    charge.meter,
                    charge.period,
                )
            )
        return tuple(out)

    # -- metering ---------------------------------------------------------------------------

    def consume_call(
        self,
        account_id: str,
        charges: Sequence[Charge],
        guard: tuple[Any, Any, Any] = (0, "", 0),
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments ``consume`` hands the consume script."""
        args: list[Any] = [self._now(), SOURCE_TTL, *self._guesses()]
        for charge in charges:
            if charge.rate is not None:  # consume.lua's GCRA block; ordered last (consume)
                args += ["rate", charge.cost, charge.rate.emission_us, charge.rate.burst, 0, 0, 0]
                continue
            limit = -1 if charge.limit is None else charge.limit
            args += [
                charge.period or "",
                charge.cost,
                limit,
                self._ttl(charge),
                charge.package,
                1 if charge.overage else 0,
                charge.history_ttl,
            ]
        # the late-decision guard (consume.lua's top): deadline, decision id, marker ttl;
        # unguarded by default (the Redis benchmark replays one call many times)
        args += list(guard)
        return [self._base(account_id, charge) for charge in charges], args

    async def consume(self, account_id: str, charges: Sequence[Charge]) -> Decision:
        if not charges:
            return Decision(True, ())
        # consume.lua takes rate charges after every quota charge: order them so, and
        # answer in the caller's order
        order = sorted(range(len(charges)), key=lambda i: charges[i].rate is not None)
        if order != sorted(order):
            ordered = [charges[i] for i in order]
            decision = await self._consume(account_id, ordered)
            states: list[MeterState | None] = [None] * len(charges)
            for position, index in enumerate(order):
                states[index] = decision.states[position]
            refused = None if decision.refused is None else order[decision.refused]
            return Decision(decision.admitted, tuple(s for s in states if s is not None), refused)
        return await self._consume(account_id, charges)

    async def _consume(self, account_id: str, charges: Sequence[Charge]) -> Decision:
        if self._late.sample_due():
            self._spawn(self._sample_time())
        decision_id, _ = self._late.ticket()
        # consume.lua's guard: a late decision applies nothing (late.py says why it is exact);
        # the deadline is taken when the decision is written, as the budget starts then
        deadline = AtSend(lambda: repr(self._late.deadline()))
        keys, args = self.consume_call(
            account_id, charges, guard=(deadline, decision_id, MARKER_TTL_MS)
        )
        try:
            raw = await self._script("consume", keys, args)
        except BaseException:
            # no answer, so no decision: make sure it never counts, even if it ran
            self._late.give_up(account_id, decision_id, charges)
            raise
        if int(raw[0]) < 0:
            raise StoreUnavailable("the store ran the decision after its deadline; nothing applied")
        admitted, refused = int(raw[0]) == 1, int(raw[1])
        states = self._states(raw[2:], charges)
        return Decision(admitted, states, None if admitted else refused)

    # -- decisions given up on (late.py) ---------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sample_time(self) -> None:
        self._late.sampling()
        # a failed sample only keeps the previous offset (or none: then voids alone protect)
        # not pipelined: the answer must be read the moment it arrives, since the time it
        # is observed at bounds the offset (a batch's reply would be handed over later)
        with contextlib.suppress(StoreUnavailable, TypeError, ValueError):
            seconds, micros = await self._run(lambda: self._client.time())
            self._late.observe(int(seconds) + int(micros) / 1_000_000)

    async def _void(self, account_id: str, decision_id: str, charges: Sequence[Charge]) -> None:
        keys = [decision_key(account_id, decision_id)]
        args: list[Any] = [MARKER_TTL_MS]
        for charge in charges:
            keys.append(self._base(account_id, charge))
            if charge.rate is not None:  # its TAT moves back by what the decision took
                args += ["rate", charge.cost * charge.rate.emission_us, 0]
                continue
            args += [charge.period or "", charge.cost, 1 if charge.history_ttl else 0]
        await self._script("void", keys, args)

    async def settle(self) -> None:
        await self._late.settle()

    async def lease(self, account_id: str, items: Sequence[Lease]) -> tuple[Granted, ...]:
        # a lease cut off by the budget is not voided: its units stay taken until the window
        # ends, under-admission of at most one lease (docs/operations.md)
        keys = [self._base(account_id, item.charge) for item in items]
        args: list[Any] = [self._now()]
        for item in items:
            charge = item.charge
            window_key, history = (*item.held, "", "")[:2]
            args += [
                charge.period or "",
                charge.cost,
                charge.limit,
                self._ttl(charge),
                charge.lease,
                charge.history_ttl,
                item.back,
                window_key,
                history,
            ]
        raw = await self._script("lease", keys, args)
        return tuple(
            Granted(str(key), str(history), int(units), int(used), float(reset))
            for key, history, units, used, reset in zip(*[iter(raw)] * 5, strict=True)
        )

    async def release(self, account_id: str, items: Sequence[tuple[str, int]]) -> None:
        if items:
            await self._script("release", [k for k, _ in items], [c for _, c in items])

    async def peek(self, account_id: str, charges: Sequence[Charge]) -> tuple[MeterState, ...]:
        if not charges:
            return ()
        keys = [self._base(account_id, charge) for charge in charges]
        args = [
            self._now(),
            *("rate" if c.rate is not None else c.period or "" for c in charges),
        ]
        return self._states(await self._script("peek", keys, args), charges)

    async def read(self, account_id: str, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        return [int(v) for v in await self._script("read", keys, [])]

    async def set_usage(self, account_id: str, charge: Charge, value: int) -> MeterState:
        args = [self._now(), charge.period or "", value, self._ttl(charge)]
        raw = await self._script("set_usage", [self._base(account_id, charge)], args)
        key, used, reset = raw
        reset_at = None if int(reset) < 0 else float(reset)
        return MeterState(
            str(key),
            int(used),
            charge.limit,
            reset_at,
            charge.package,
            meter=charge.meter,
            period=charge.period,
        )

    # -- records ----------------------------------------------------------------------------

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        raw = await self._command("GET", record_key(kind, record_id))
        return None if raw is None else dict(json.loads(raw))

    async def put_record(
        self,
        kind: str,
        record_id: str,
        doc: dict[str, Any],
        *,
        only_if_absent: bool = False,
        ttl_seconds: int | None = None,
    ) -> bool:
        key, text = record_key(kind, record_id), json.dumps(doc)
        expiry = [] if ttl_seconds is None else ["EX", ttl_seconds]
        done = await self._command("SET", key, text, *(["NX"] if only_if_absent else []), *expiry)
        return bool(done)

    async def fetch_record(
        self, kind: str, record_id: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        raw = await self._command("GET", record_key(kind, record_id))
        return (None, None) if raw is None else (dict(json.loads(raw)), str(raw))

    async def swap_record(
        self, kind: str, record_id: str, version: str | None, doc: dict[str, Any] | None
    ) -> bool:
        text = "" if doc is None else json.dumps(doc)
        done = await self._script("swap", [record_key(kind, record_id)], [version or "", text])
        return int(done) == 1

    async def delete_record(self, kind: str, record_id: str) -> bool:
        removed = await self._command("DEL", record_key(kind, record_id))
        return int(removed) > 0

    async def add_member(self, kind: str, owner_id: str, member: str) -> None:
        await self._command("SADD", set_key(kind, owner_id), member)

    async def remove_member(self, kind: str, owner_id: str, member: str) -> None:
        await self._command("SREM", set_key(kind, owner_id), member)

    async def members(self, kind: str, owner_id: str) -> list[str]:
        found = await self._command("SMEMBERS", set_key(kind, owner_id))
        return sorted(str(m) for m in found)

    async def next_id(self, kind: str) -> int:
        return int(await self._command("INCR", sequence_key(kind)))

    # -- notifications and lifecycle --------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        await self._command("PUBLISH", channel, message)

    async def listen(self, channel: str) -> AsyncGenerator[str, None]:
        pubsub = self._listener.pubsub()

        async def subscribed() -> None:
            await pubsub.subscribe(channel)
            # only once Redis confirms is every later PUBLISH certain to reach us
            while True:
                message = await pubsub.get_message(timeout=self._budget)
                if message is not None and message.get("type") == "subscribe":
                    return

        try:
            await self._run(subscribed)
            yield ""
            while True:
                try:
                    # a read that waits for messages must not be cut by the command budget
                    message = await pubsub.get_message(timeout=1.0)
                except (redis.exceptions.RedisError, OSError) as exc:
                    raise StoreUnavailable(f"the store's notifications failed: {exc}") from exc
                if message is not None and message.get("type") == "message":
                    yield str(message["data"])
        finally:
            # bounded: a subscription on a dead or frozen server must not hold up shutdown
            with contextlib.suppress(TimeoutError, redis.exceptions.RedisError, OSError):
                async with asyncio.timeout(self._budget):
                    await pubsub.aclose()

    async def ping(self) -> None:
        await self._run(lambda: self._client.ping())

    async def close(self) -> None:
        # voids still owed get a bounded last chance, so a process stopping right after a
        # store hiccup does not leave the decisions it answered 503 for charged
        await self._late.close(_CLOSE_SETTLE_SECONDS)
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pipeliner is not None:
            await self._pipeliner.close()
        await self._client.aclose()
        for other in self._others:
            await other.aclose()
