"""Billing endpoints (seed 001): overage switches, package purchases, usage and statements.

Callers reach them as policy routes with ``answer:`` (``/api/billing/...``); ops reach the
same operations on the admin listener (``/admin/accounts/{id}/...``). Packages and switches
live on the account record and are changed with ``Registry.change_account`` (one atomic
step each, so racing purchases, grants and switches across processes all stay), reach
every process through the registry's cache invalidation, and the next request's single
consume already draws on them.
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
import io
import re
from typing import Any

from aiohttp import web

from gateway.api.body import read_json
from gateway.api.local import LocalContext, LocalHandler
from gateway.errors import BadRequest, Gone, NotFound, ValidationError
from gateway.identity.registry import Account, Registry
from gateway.metering import decide
from gateway.metering.clock import Clock
from gateway.metering.keys import history_key, meter_key, source_key
from gateway.metering.store import Store
from gateway.metering.windows import STATEMENT_RETENTION, iso, window
from gateway.policy.billing import Billing, format_money
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
_MAX_HISTORY_DAYS = 3660  # ten years: the most one history request reads
_DEFAULT_HISTORY_DAYS = 365


def money(minor: int) -> dict[str, Any]:
    return {"amount_cents": minor, "amount": format_money(minor)}


def _billing(policy: Policy) -> Billing:
    if policy.billing is None:
        raise NotFound(f"policy {policy.name} sells nothing (no billing section)")
    return policy.billing


def switches_json(billing: Billing, account: Account) -> dict[str, bool]:
    """Every switch the policy names, off unless the account turned it on."""
    return {
        "enabled": bool(account.overage.get("enabled", False)),
        **{name: bool(account.overage.get(name, False)) for name in billing.switches},
    }


class BillingApi:
    def __init__(
        self, *, policy: PolicyHolder, registry: Registry, store: Store, clock: Clock
    ) -> None:
        self._policy = policy
        self._registry = registry
        self._store = store
        self._clock = clock

    def handlers(self) -> dict[str, LocalHandler]:
        return {
            "billing-overage": self.get_overage,
            "billing-set-overage": self.set_overage,
            "billing-buy-package": self.buy_package,
            "billing-usage": self.usage,
            "billing-statement": self.own_statement,
            "billing-history": self.history,
            "billing-history-export": self.export,
        }

    def routes(self) -> list[web.RouteDef]:
        """The same operations for ops, on the admin listener."""
        return [
            web.get("/admin/accounts/{account_id}/billing", self.admin_billing),
            web.put("/admin/accounts/{account_id}/overage", self.admin_set_overage),
            web.post("/admin/accounts/{account_id}/packages", self.admin_grant),
            web.delete("/admin/accounts/{account_id}/packages/{package_id}", self.admin_remove),
            web.get("/admin/accounts/{account_id}/statement", self.admin_statement),
        ]

    # -- overage switches -------------------------------------------------------------------

    async def get_overage(self, ctx: LocalContext) -> web.Response:
        account = await self._registry.require_account(ctx.require_identity().account_id)
        return web.json_response(switches_json(_billing(ctx.policy), account))

    async def set_overage(self, ctx: LocalContext) -> web.Response:
        account_id = ctx.require_identity().account_id
        body = await read_json(ctx.request)
        return web.json_response(await self._set_switches(ctx.policy, account_id, body))

    async def _set_switches(
        self, policy: Policy, account_id: str, body: dict[str, Any]
    ) -> dict[str, bool]:
        billing = _billing(policy)
        known = ("enabled", *billing.switches)
        for name, value in body.items():
            if name not in known:
                raise ValidationError(
                    f"unknown switch {name!r}; switches are: {', '.join(known)}",
                    details={"field": name},
                )
            if not isinstance(value, bool):
                raise ValidationError(
                    f"{name} must be a boolean.", details={"field": name, "received": value}
                )
        # only the switches named change: a racing switch or tier change stays as it was
        updated, _ = await self._registry.change_account(
            account_id, lambda a: dataclasses.replace(a, overage={**a.overage, **body})
        )
        return switches_json(billing, updated)

    # -- packages ---------------------------------------------------------------------------

    async def buy_package(self, ctx: LocalContext) -> web.Response:
        """``POST /api/billing/<kind>-package?package_size=<size>``, once per Idempotency-Key."""
        billing = _billing(ctx.policy)
        identity = ctx.require_identity()
        kind = ctx.request.path.rstrip("/").rpartition("/")[2].removesuffix("-package")
        sizes = billing.packages.get(kind)
        if sizes is None:
            raise NotFound(f"no {kind!r} packages in this policy")
        size = ctx.request.query.get("package_size")
        if size is None or size not in sizes:
            raise ValidationError(
                f"package_size must be one of: {', '.join(sizes)}",
                details={"field": "package_size", "received": size},
            )
        key = ctx.request.headers.get("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise BadRequest("Idempotency-Key is 1 to 200 visible ASCII characters")
        entry = await self._add_package(
            identity.account_id, sizes[size].kind, size, "purchase", idempotency_key=key
        )
        # a retried purchase answers as the first did (its package) and buys nothing more
        body = {"success": True, "package": entry, "price": money(int(entry["price_cents"]))}
        return web.json_response(body, status=201)

    async def _add_package(
        self,
        account_id: str,
        kind: str,
        size: str,
        source: str,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Append a package to the account in one atomic step; with an idempotency key,
        only if no package was bought with it yet (then that package is returned)."""
        policy = self._policy.current
        package = _billing(policy).packages[kind][size]
        entry = {
            "id": f"pkg_{await self._store.next_id('package')}",
            "kind": kind,
            "size": size,
            "meter": package.meter,
            "units": package.units,
            "price_cents": package.price if source == "purchase" else 0,
            "at": self._clock.now(),
            "source": source,
        }

        def add(account: Account) -> Account:
            if idempotency_key is not None and idempotency_key in account.purchases:
                return account
            purchases = account.purchases
            if idempotency_key is not None:
                purchases = {**purchases, idempotency_key: str(entry["id"])}
            return dataclasses.replace(
                account, packages=[*account.packages, entry], purchases=purchases
            )

        account, _ = await self._registry.change_account(account_id, add)
        if idempotency_key is None:
            return entry
        bought = account.purchases[idempotency_key]
        return next(p for p in account.packages if p["id"] == bought)

    # -- usage and statements ---------------------------------------------------------------

    async def usage(self, ctx: LocalContext) -> web.Response:
        identity = ctx.require_identity()
        account = await self._registry.require_account(identity.account_id)
        return web.json_response(await self._usage(ctx.policy, account, identity))

    async def _usage(self, policy: Policy, account: Account, identity: Any) -> dict[str, Any]:
        billing = _billing(policy)
        tier = policy.tier(account.tier)
        # quotas only: a rate meter has no usage to bill, only a bucket refilling by itself
        names = [
            name
            for name, meter in policy.meters.items()
            if meter.scope == "account" and meter.kind != "rate"
        ]
        charges = decide.charges(policy, tier, account.id, None, [(n, 0) for n in names], identity)
        states = await self._store.peek(account.id, charges)
        meters: dict[str, Any] = {}
        total = 0
        for state in states:
            cost = billing.overage_cost(state.meter, state.from_overage)
            total += cost
            meters[state.meter] = {
                "used": state.used,
                "allowance": state.limit,
                "packages": state.package,
                "capacity": state.capacity,
                "from_allowance": state.used - state.from_package - state.from_overage,
                "from_packages": state.from_package,
                "overage_units": state.from_overage,
                "overage_cost": money(cost),
                "reset": iso(state.reset_at) if state.reset_at is not None else None,
            }
        return {
            "account_id": account.id,
            "tier": tier.name,
            "overage": switches_json(billing, account),
            "packages": account.packages,
            "meters": meters,
            "overage_cost": money(total),
        }

    async def own_statement(self, ctx: LocalContext) -> web.Response:
        account = await self._registry.require_account(ctx.require_identity().account_id)
        month = ctx.request.query.get("month") or window("month", self._clock.now())[0]
        return web.json_response(await self.statement(ctx.policy, account, month))

    async def statement(self, policy: Policy, account: Account, month: str) -> dict[str, Any]:
        """One calendar month: overage units by meter and source, their cost, packages bought.

        Overage is priced on the month's total per meter (``Billing.overage_cost``), so
        rounding happens once per meter and month, never per call. A month's counters are
        kept ``STATEMENT_RETENTION`` from their first unit; for a month that began longer ago
        some may be gone, so it is refused rather than shown with wrong numbers.
        """
        billing = _billing(policy)
        found = _MONTH.fullmatch(month)
        if found is None or not 1 <= int(found.group(2)) <= 12:
            raise ValidationError("month is YYYY-MM", details={"field": "month", "received": month})
        year, number = int(found.group(1)), int(found.group(2))
        start = calendar.timegm((year, number, 1, 0, 0, 0, 0, 0, 0))
        end = start + calendar.monthrange(year, number)[1] * 86_400
        days = STATEMENT_RETENTION // 86_400
        if start + STATEMENT_RETENTION <= self._clock.now():
            raise Gone(
                f"the statement for {month} is past retention: a month's usage is kept "
                f"{days} days from its start",
                details={"month": month, "retention_days": days},
            )
        lines = []
        total = 0
        for meter, rule in billing.overage.items():
            key = meter_key(account.id, meter, account.id, month)
            used, packaged, over = await self._store.read(
                account.id, [key, source_key(key, "package"), source_key(key, "overage")]
            )
            cost = billing.overage_cost(meter, over)
            total += cost
            lines.append(
                {
                    "meter": meter,
                    "used": used,
                    "units": {
                        "allowance": max(used - packaged - over, 0),
                        "package": packaged,
                        "overage": over,
                    },
                    "price_rule": rule.describe()
                    + f", minimum {format_money(billing.minimum_charge)}",
                    "cost": money(cost),
                }
            )
        bought = [p for p in account.packages if start <= float(p["at"]) < end]
        packages_total = sum(int(p["price_cents"]) for p in bought)
        return {
            "account_id": account.id,
            "month": month,
            "overage": lines,
            "overage_total": money(total),
            "packages": bought,
            "packages_total": money(packages_total),
            "total": money(total + packages_total),
        }

    # -- analytics history ------------------------------------------------------------------

    async def _history(self, ctx: LocalContext) -> tuple[list[str], list[list[Any]], int | None]:
        """Meters, rows (oldest day first) and the retention the rows were cut to."""
        identity = ctx.require_identity()
        billing = _billing(ctx.policy)
        tier = ctx.policy.tier(identity.tier)
        retention = billing.retention_days.get(tier.name)
        # an unlimited retention keeps every day; a request still reads a bounded range
        most = retention if retention is not None else _MAX_HISTORY_DAYS
        raw = ctx.request.query.get("days")
        days = min(most, _DEFAULT_HISTORY_DAYS)
        if raw is not None:
            if not raw.isdigit() or not 1 <= int(raw) <= _MAX_HISTORY_DAYS:
                raise ValidationError(
                    f"days is 1 to {_MAX_HISTORY_DAYS}", details={"field": "days", "received": raw}
                )
            days = min(int(raw), most)  # beyond the retention nothing is returned
        meters = [
            name
            for name, meter in ctx.policy.meters.items()
            if meter.kind == "counter" and meter.scope == "account"
        ]
        now = self._clock.now()
        day_ids = [window("day", now - back * 86_400)[0] for back in range(days - 1, -1, -1)]
        account_id = identity.account_id
        keys = [history_key(account_id, m, account_id, d) for d in day_ids for m in meters]
        values = await self._store.read(account_id, keys)
        rows = [
            [day, *values[i * len(meters) : (i + 1) * len(meters)]] for i, day in enumerate(day_ids)
        ]
        return meters, rows, retention

    async def history(self, ctx: LocalContext) -> web.Response:
        """Daily usage per meter for the tier's analytics retention (oldest day first)."""
        meters, rows, retention = await self._history(ctx)
        return web.json_response(
            {
                "retention_days": retention,
                "meters": meters,
                "days": [
                    {"date": row[0], **dict(zip(meters, row[1:], strict=True))} for row in rows
                ],
            }
        )

    async def export(self, ctx: LocalContext) -> web.Response:
        """The same history as CSV; the route consumes one of the month's analytics exports."""
        meters, rows, _ = await self._history(ctx)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["date", *meters])
        writer.writerows(rows)
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="usage-history.csv"'},
        )

    # -- admin ------------------------------------------------------------------------------

    async def admin_billing(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        billing = _billing(self._policy.current)
        return web.json_response(
            {"overage": switches_json(billing, account), "packages": account.packages}
        )

    async def admin_set_overage(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        body = await read_json(request)
        return web.json_response(await self._set_switches(self._policy.current, account.id, body))

    async def admin_grant(self, request: web.Request) -> web.Response:
        """``{"kind": "logic-engine", "size": "small"}``: a package given free of charge."""
        account = await self._registry.require_account(request.match_info["account_id"])
        billing = _billing(self._policy.current)
        body = await read_json(request)
        kind, size = body.get("kind"), body.get("size")
        if not isinstance(kind, str) or kind not in billing.packages:
            raise ValidationError(
                f"kind must be one of: {', '.join(billing.packages)}",
                details={"field": "kind", "received": kind},
            )
        if not isinstance(size, str) or size not in billing.packages[kind]:
            raise ValidationError(
                f"size must be one of: {', '.join(billing.packages[kind])}",
                details={"field": "size", "received": size},
            )
        entry = await self._add_package(account.id, kind, size, "grant")
        return web.json_response({"package": entry}, status=201)

    async def admin_remove(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        package_id = request.match_info["package_id"]

        def remove(account: Account) -> Account:
            kept = [p for p in account.packages if p["id"] != package_id]
            if len(kept) == len(account.packages):
                raise NotFound(f"account {account_id} holds no package {package_id!r}")
            return dataclasses.replace(account, packages=kept)

        await self._registry.change_account(account_id, remove)
        return web.json_response({"removed": package_id})

    async def admin_statement(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        month = request.query.get("month") or window("month", self._clock.now())[0]
        return web.json_response(await self.statement(self._policy.current, account, month))
