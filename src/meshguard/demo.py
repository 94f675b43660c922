"""The guided demo run by `./dev demo` (to be filled in)."""

from __future__ import annotations


def main() -> int:
    print("meshguard demo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
