"""`gateway policy show`: a policy's tiers as a Markdown table, in the seed documents' style."""

from __future__ import annotations

from decimal import Decimal

from gateway.policy.model import Meter, Policy
from gateway.policy.rates import format_rate

_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


def format_limit(meter: Meter, limit: int | None) -> str:
    if limit is None:
        return "Unlimited"
    if meter.unit != "bytes":
        return f"{limit:,}"
    for unit, size in _UNITS:
        if meter.display_unit == unit or (meter.display_unit is None and limit >= size):
            # exact, so the table shows what the policy holds ("2.01 MB", never rounded)
            number = f"{Decimal(limit) / size:f}"
            if "." in number:
                number = number.rstrip("0").rstrip(".")
            return f"{number} {unit}"
    return f"{limit} B"


def tier_table(policy: Policy) -> str:
    tiers = list(policy.tiers.values())
    lines = [
        "| Feature | " + " | ".join(t.title for t in tiers) + " |",
        "|---|" + "---|" * len(tiers),
    ]
    for row in policy.table:
        if row in policy.meters:
            meter = policy.meters[row]
            title = meter.title
            if meter.kind == "rate":
                cells = [format_rate(t.rates.get(row)) for t in tiers]
            else:
                cells = [format_limit(meter, t.limit(row)) for t in tiers]
        elif row in policy.features:
            feature = policy.features[row]
            title = feature.title
            cells = [
                feature.shown_enabled if row in t.features else feature.shown_disabled
                for t in tiers
            ]
        else:
            title = row
            cells = [t.attributes.get(row, "") for t in tiers]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    # leases change no limit, but how close to it a hot account is admitted: shown only
    # when a tier has one, so the tables of policies without leases stay as they were
    for name, meter in policy.meters.items():
        if any(t.lease(name) for t in tiers):
            cells = [f"{t.lease(name):,}" if t.lease(name) else "" for t in tiers]
            title = f"{meter.title} (leased per process)"
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
