"""Debian's `chromium`, headless, for the `meshguard web` tests and screenshot (docs/web.md).

    dom = dump_dom(ns, "http://127.0.0.1:8385/", profile_dir)   # the DOM after the scripts ran
    screenshot(ns, url, profile_dir, Path("docs/web.png"), (1280, 800))

Both run chromium inside the namespace `ns` (as root, hence --no-sandbox) with a profile
directory of its own, and give the page `budget_ms` of virtual time: timers, including the
page's own polling, run that long before the DOM is dumped or the picture taken.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from meshguard.testing.netns import Namespace

CHROMIUM = "chromium"


def chromium_skip_reason() -> str | None:
    """Why a browser test cannot run here (None when it can)."""
    if shutil.which(CHROMIUM) is None:
        return "needs Debian's chromium (apt-get install chromium)"
    return None


def _argv(profile: Path, budget_ms: int, *extra: str) -> list[str]:
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--mute-audio",
            f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra]


def dump_dom(ns: Namespace, url: str, profile: Path, budget_ms: int = 3000,
             timeout: float = 60) -> str:
    """The page's serialized DOM once `budget_ms` of virtual time has passed."""
    res = ns.run([*_argv(profile, budget_ms, "--dump-dom"), url], check=False, timeout=timeout,
                 env={"HOME": str(profile)})
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def screenshot(ns: Namespace, url: str, profile: Path, out: Path,
               size: tuple[int, int] = (1280, 800), budget_ms: int = 3000,
               timeout: float = 60) -> None:
    """A PNG of the page at `size` (width, height) written to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    res = ns.run([*_argv(profile, budget_ms, f"--screenshot={out.resolve()}",
                         f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"), url],
                 check=False, timeout=timeout, env={"HOME": str(profile)})
    if res.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed ({res.returncode}): {res.stderr[-2000:]}")
