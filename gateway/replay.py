"""What-if replay: an access log run against a candidate policy on a scratch store.

Each logged request is decided again in the log's own time order, on a FakeClock set to
its logged time, by the same gates and meters the pipeline uses. Requests the candidate
refuses that were admitted are "newly refused", and the other way round "newly admitted".
The scratch store starts empty: usage from before the log's first line is not known.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.accesslog import parse_time
from gateway.errors import GatewayError, PolicyRefusal
from gateway.metering import decide, rates
from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.policy.model import Policy
from gateway.proxy.path import canonical_path

REFUSALS = frozenset({"quota_exceeded", "rate_limited", "feature_unavailable", "tier_forbidden"})
# outcomes decided before the policy spoke (or without the store): nothing to compare
_UNDECIDED = frozenset({"unauthenticated", "not_found", "bad_request", "store_unavailable"})
_UNANSWERED = frozenset({"upstream_error", "upstream_timeout"})


@dataclass
class Group:
    """The changes for one tier and route, with the first few examples of each."""

    newly_refused: int = 0
    newly_admitted: int = 0
    refused_examples: list[dict[str, Any]] = field(default_factory=list)
    admitted_examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    replayed: int = 0
    skipped: int = 0
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "skipped": self.skipped,
            "changes": [
                {"tier": tier, "route": route, **vars(group)}
                for (tier, route), group in sorted(self.groups.items())
            ],
        }

    def markdown(self) -> str:
        lines = [
            f"Replayed {self.replayed} requests ({self.skipped} skipped: no decision to compare).",
            "",
        ]
        if not self.groups:
            return "\n".join([*lines, "No request changes its decision.", ""])
        lines += ["| Tier | Route | Newly refused | Newly admitted |", "|---|---|---|---|"]
        for (tier, route), group in sorted(self.groups.items()):
            lines.append(f"| {tier} | {route} | {group.newly_refused} | {group.newly_admitted} |")
        lines.append("")
        for (tier, route), group in sorted(self.groups.items()):
            for kind, examples in (
                ("newly refused", group.refused_examples),
                ("newly admitted", group.admitted_examples),
            ):
                for example in examples:
                    lines.append(
                        f"- {tier} {route} {kind}: {example['time']} {example['request']} "
                        f"(account {example['account_id']}, request {example['request_id']}): "
                        f"was {example['was']}, now {example['now']}"
                    )
        lines.append("")
        return "\n".join(lines)


def read_log(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every line of the logs, in time order (a stable sort keeps each file's own order)."""
    entries: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    entry["_at"] = parse_time(entry["time"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not an access log line ({exc})") from exc
                entries.append(entry)
    entries.sort(key=lambda e: float(e["_at"]))
    return entries


async def replay(policy: Policy, entries: Iterable[dict[str, Any]], *, examples: int = 3) -> Report:
    """Decide every logged request again under ``policy`` and report what changes."""
    entries = list(entries)
    clock = FakeClock(float(entries[0]["_at"]) if entries else 0.0)
    store = MemoryStore(clock)
    report = Report()
    for entry in entries:
        was = str(entry.get("decision"))
        account_id = entry.get("account_id")
        if was in _UNDECIDED or not account_id:
            report.skipped += 1
            continue
        clock.set(float(entry["_at"]))
        now = await _decide(policy, store, entry, account_id)
        if now is None:
            report.skipped += 1
            continue
        report.replayed += 1
        was_refused, now_refused = was in REFUSALS, now in REFUSALS
        if was_refused == now_refused:
            continue
        group = report.groups.setdefault((str(entry.get("tier")), str(entry.get("route"))), Group())
        example = {
            "time": entry["time"],
            "request_id": entry.get("request_id"),
            "account_id": account_id,
            "request": f"{entry.get('method')} {entry.get('path')}",
            "was": was,
            "now": now,
        }
        if now_refused:
            group.newly_refused += 1
            if len(group.refused_examples) < examples:
                group.refused_examples.append(example)
        else:
            group.newly_admitted += 1
            if len(group.admitted_examples) < examples:
                group.admitted_examples.append(example)
    return report


async def _decide(
    policy: Policy, store: MemoryStore, entry: dict[str, Any], account_id: str
) -> str | None:
    """The candidate's decision for one logged request; it meters and settles as the
    pipeline would, with the logged status standing for the upstream's answer."""
    try:
        path, _ = canonical_path(str(entry.get("path")))
        matched = policy.match(str(entry.get("method")), path)
    except GatewayError:
        return None
    if matched is None or not matched[0].auth:
        return None
    route = matched[0]
    tier = policy.tier(entry.get("tier"))
    try:
        decide.check_gates(policy, tier, route)
    except PolicyRefusal as refusal:
        return refusal.outcome
    project_id = entry.get("project_id")
    status = int(entry.get("status") or 0)
    ok = 200 <= status < 300
    answered = entry.get("decision") not in _UNANSWERED
    if isinstance(logged := entry.get("refunded"), list):
        # the gateway logged what it gave back: a 502/504 whose request may have reached the
        # upstream stays charged
        answered = not any(
            isinstance(item, dict)
            and policy.meters.get(str(item.get("meter"))) is not None
            and policy.meters[str(item.get("meter"))].kind == "counter"
            for item in logged
        )
    giveback: list[tuple[str, int]] = []
    # a rate meter scoped per key or client is replayed per account: the log names neither
    charges = decide.charges(policy, tier, account_id, project_id, route.consume)
    if charges:
        decision = await store.consume(account_id, charges)
        if not decision.admitted:
            refused = charges[decision.refused or 0]
            return "rate_limited" if refused.rate is not None else "quota_exceeded"
        for charge, state in zip(charges, decision.states, strict=True):
            name, cost = charge.meter, charge.cost
            kind = policy.meters[name].kind
            if kind == "rate":
                if not answered and route.refund == "unanswered":
                    giveback.append(rates.refund(state, cost))
                continue
            if (kind == "gauge" and not ok) or (
                kind == "counter" and not answered and route.refund == "unanswered"
            ):
                giveback.append((state.key, cost))
    if ok and route.release:
        released = decide.charges(policy, tier, account_id, project_id, route.release)
        states = await store.peek(account_id, released)
        giveback += [(s.key, c.cost) for s, c in zip(states, released, strict=True)]
    if giveback:
        await store.release(account_id, giveback)
    return "answered" if route.answer else "forwarded"
