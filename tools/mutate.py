"""`make mutate MODULE=gateway/metering/windows.py`: mutmut on one module, in its own directory.

mutmut 3 reads its settings from ./pyproject.toml, keeps mutants and verdicts in ./mutants and
generates mutants for every file its config admits. So each module gets build/mutate/<module>/:
links to the sources, and a pyproject.toml whose [tool.mutmut] names only that module and only
its group's fast tests (GROUPS below). Verdicts stay there: a second run retests only functions
whose source changed, and `mutmut show`/`mutmut run <name>` work from that directory.

    python tools/mutate.py gateway/metering/windows.py [--max-children 1] [mutant names...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def deselect(*node_ids: str) -> tuple[str, ...]:
    return tuple(arg for node_id in node_ids for arg in ("--deselect", node_id))


# The fast, deterministic suites that exercise each group: memory and one redis-server, no
# Cluster (`-k "not cluster"` in pyproject.toml), no `gateway serve` or `gateway policy`
# subprocesses (they would run the mutated code untraced, and slowly), no deploy tools,
# schemathesis or benchmarks, no test that races a wall-clock deadline (slow-client limits).
# mutmut maps every mutant to the tests that reached its function, so a wide selection costs
# one stats run, not a run per mutant.
GROUPS: dict[str, tuple[str, ...]] = {
    "gateway/metering": (
        "tests/test_metering_edges.py",
        "tests/test_windows.py",
        "tests/test_store_contract.py",
        "tests/test_store_ledger.py",
        "tests/test_store_expiry.py",
        "tests/test_service_caps.py",
        "tests/test_reported_usage.py",
        "tests/test_billing.py",
        # the fail-open guard, streamed body metering, rate meters and leases: in-process,
        # on memory and one redis-server (their Cluster cases drop out with "not cluster")
        "tests/test_redis_faults.py",
        "tests/test_billing_faults.py",
        "tests/test_adversarial_body_meter.py",
        "tests/test_rate_store.py",
        "tests/test_rate_limits.py",
        "tests/test_leases.py",
        "tests/test_leases_edges.py",
        "tests/test_guard_edges.py",
        "tests/test_stream_charge.py",
        "tests/test_rate_expiry.py",
    ),
    "gateway/policy": (
        "tests/test_policy_messages.py",
        "tests/test_policy_answered.py",
        "tests/test_policy_diff.py",
        "tests/test_policy_lint.py",
        "tests/test_policy_source.py",
        # hostile YAML under hypothesis deadlines (2 s, 5 s): past them once every call is traced
        *deselect(
            "tests/test_policy_source.py::test_yaml_built_from_syntax_pieces_loads_or_is_a_config_error",
            "tests/test_policy_source.py::test_any_text_loads_or_is_a_config_error",
            "tests/test_policy_source.py::test_any_nesting_depth_loads_or_is_refused",
            "tests/test_policy_source.py::test_alias_expansion_is_bounded_however_it_is_stacked",
        ),
        "tests/test_policy_table.py",
        "tests/test_ops_reload.py",
        "tests/test_reload_guards.py",
        # test_policy_check's fixtures and `policy check` itself, run in this process
        "tests/test_policy_check_inprocess.py",
        "tests/test_policy_lint_edges.py",
        "tests/test_policy_leases.py",
        "tests/test_rate_policy.py",
        "tests/test_shipped_policies.py",
        # `gateway policy show` subprocesses: they run the original code, untraced
        *deselect(
            "tests/test_shipped_policies.py::test_policy_show_prints_the_seed_table",
            "tests/test_shipped_policies.py::test_policy_show_agrees_with_the_anonymous_vs_free_table",
        ),
    ),
    "gateway/identity": (
        "tests/test_identity.py",
        "tests/test_identity_cache.py",
        "tests/test_jwt.py",
        "tests/test_jwks.py",
        "tests/test_login_throttle.py",
    ),
    "gateway/proxy": (
        "tests/test_proxy_paths.py",
        "tests/test_proxy_headers.py",
        "tests/test_proxy_passthrough.py",
        "tests/test_proxy_upstream.py",
        "tests/test_pool.py",
    ),
    "gateway/api/stripe.py": (
        "tests/test_stripe.py",
        "tests/test_billing.py",
    ),
}

# pytest arguments a group adds to [tool.mutmut] pytest_add_cli_args (the later --timeout wins):
# loading a policy with every call traced (mutmut's stats run) takes longer than 30 s
EXTRA_ARGS: dict[str, tuple[str, ...]] = {"gateway/policy": ("--timeout=180",)}

# what a work directory links to: the package, the tests and what the tests read
LINKED = ("gateway", "tests", "policies", "config", "docs", "README.md", "CHANGELOG.md")


def group_of(module: str) -> str:
    for group in GROUPS:
        if module == group or module.startswith(group + "/"):
            return group
    raise SystemExit(f"{module}: not in a mutation group ({', '.join(GROUPS)})")


def toml_value(value: Any) -> str:
    # the settings are strings, lists of strings, numbers and booleans: JSON spells them as TOML
    return json.dumps(value)


def prepare(module: str) -> Path:
    """The module's work directory, its pyproject.toml naming only MODULE and its group's tests."""
    if not (ROOT / module).exists():
        raise SystemExit(f"{module}: no such file or package")
    work = ROOT / "build" / "mutate" / module.replace("/", ".")
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    text = (ROOT / "pyproject.toml").read_text()
    settings = dict(tomllib.loads(text)["tool"]["mutmut"])
    settings["only_mutate"] = [module if module.endswith(".py") else module.rstrip("/") + "/*"]
    group = group_of(module)
    settings["pytest_add_cli_args_test_selection"] = list(GROUPS[group])
    settings["pytest_add_cli_args"] = [*settings["pytest_add_cli_args"], *EXTRA_ARGS.get(group, ())]
    head, _, rest = text.partition("[tool.mutmut]\n")
    # the next table after [tool.mutmut], if any, stays
    tail = rest[rest.find("\n[") + 1 :] if "\n[" in rest else ""
    table = "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
    (work / "pyproject.toml").write_text(f"{head}[tool.mutmut]\n{table}\n{tail}")
    return work


def summary(work: Path, module: str) -> dict[str, Counter[str]]:
    """Verdicts per status for each file of MODULE, from mutmut's own result files."""
    from mutmut.stats import status_by_exit_code

    target = work / "mutants" / module
    metas = [target.with_name(target.name + ".meta")] if module.endswith(".py") else []
    metas = metas or sorted(target.rglob("*.py.meta"))
    per_file: dict[str, Counter[str]] = {}
    for meta in metas:
        if meta.exists():
            verdicts = json.loads(meta.read_text())["exit_code_by_key"]
            if verdicts:
                name = str(meta.relative_to(work / "mutants")).removesuffix(".meta")
                per_file[name] = Counter(status_by_exit_code[code] for code in verdicts.values())
    return per_file


def report(per_file: dict[str, Counter[str]]) -> str:
    def line(name: str, counts: Counter[str]) -> str:
        return f"{name}: {counts.total()} mutants, " + ", ".join(
            f"{n} {status}" for status, n in sorted(counts.items())
        )

    lines = [line(name, counts) for name, counts in per_file.items()]
    if len(per_file) > 1:
        lines.append(line("all", sum(per_file.values(), Counter())))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="a file or package under gateway/, e.g. gateway/policy")
    parser.add_argument("names", nargs="*", help="only these mutants (globs), e.g. to retest")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--summary", action="store_true", help="only print the last verdicts")
    args = parser.parse_args()
    module = args.module.rstrip("/")
    if args.summary:
        print(report(summary(ROOT / "build" / "mutate" / module.replace("/", "."), module)))
        return 0
    work = prepare(module)
    mutmut = str(Path(sys.executable).parent / "mutmut")
    command = [mutmut, "run", "--max-children", str(args.max_children), *args.names]
    print(f"in {work.relative_to(ROOT)}: {' '.join(command[1:])}", flush=True)
    # the tests must import the mutated copy, never the editable install of the original
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = subprocess.run(command, cwd=work, env=env, check=False).returncode
    subprocess.run([mutmut, "results"], cwd=work, env=env, check=False)
    print(report(summary(work, module)))
    print(f"show one: cd {work.relative_to(ROOT)} && {mutmut} show <name>")
    return code


if __name__ == "__main__":
    sys.exit(main())
