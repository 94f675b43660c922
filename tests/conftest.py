"""Suite-wide hooks: markers, MESHGUARD_REQUIRE_NETNS, and what `./dev check` leaves out.

MESHGUARD_REQUIRE_NETNS=1 (set by `./dev test`, hence by CI) says "this machine can run the
root and namespace tests": any skip of a test marked `netns`, and any skip whose reason is a
missing privilege or namespace facility, is reported as a failure instead of passing quietly.

`./dev check` (the unprivileged edit loop) runs `-m "not netns and not slow"` with the
Hypothesis profile "check"; `./dev test` runs everything with the default profile.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings

REQUIRE_NETNS = "MESHGUARD_REQUIRE_NETNS"
# The reasons netns_skip_reason() and the suite's own skipif marks give for "cannot run here".
ROOT_REASON = re.compile(r"\broot\b|namespace|netns|/dev/net/tun|\bTUN\b|CAP_NET_ADMIN|iproute2",
                         re.IGNORECASE)


# Whole modules of long runs, marked here so their files stay as their owners wrote them: long
# simulations, kill-at-every-system-call loops, and the re-run of the engine tests on the pure
# Python path (the same tests run on the default path in `./dev check`).
SLOW_MODULES = frozenset({
    "tests/swim/test_sim.py",
    "tests/identity/test_atomic_write_kill.py",
    "tests/dataplane/test_engine_pure_python.py",
})
REPO = Path(__file__).resolve().parent.parent
# Modules that use the host's own mDNS group on loopback: under `./dev test`'s two workers they
# run in one worker, one at a time, or one module's responder answers the other's query.
HOST_MDNS_MODULES = frozenset({
    "tests/daemon/test_mdns_service.py",
    "tests/daemon/test_mdns_rehome.py",
})

# `./dev check` may run as a user who cannot write the checkout: Hypothesis's example database
# then lives in memory (rather than warning on every test). Set here, at import, because the
# Hypothesis plugin loads --hypothesis-profile before any pytest_configure of ours runs.
_DATABASE: dict[str, None] = {} if os.access(Path.cwd(), os.W_OK) else {"database": None}
if _DATABASE:
    settings.register_profile("read-only-checkout", **_DATABASE)
    settings.load_profile("read-only-checkout")
# Fewer examples for property tests that do not set their own count: the edit loop's budget.
settings.register_profile("check", max_examples=20, **_DATABASE)


def _required() -> bool:
    return os.environ.get(REQUIRE_NETNS, "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "netns: needs root, network namespaces and TUN (real-network tests)"
    )
    config.addinivalue_line("markers", "slow: a long run; `./dev check` leaves it out")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.relative_to(REPO).as_posix() if item.path.is_relative_to(REPO) else ""
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if module in HOST_MDNS_MODULES:
            item.add_marker(pytest.mark.xdist_group("host-mdns"))
        if item.get_closest_marker("netns") is not None:
            # should namespace tests ever run on several workers, they stay in one, one at a
            # time, as they are written to run (`./dev test` runs them apart, in one process)
            item.add_marker(pytest.mark.xdist_group("netns"))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not (report.skipped and _required()) or hasattr(report, "wasxfail"):
        return report
    reason = _skip_reason(report)
    if item.get_closest_marker("netns") is not None or ROOT_REASON.search(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"{REQUIRE_NETNS}=1: this machine must run root and namespace tests, but "
            f"{item.nodeid} skipped: {reason}"
        )
    return report

