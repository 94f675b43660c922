"""Build the optional C data-plane extension and install the man page and shell completions.

Without a working C compiler, Python headers, OpenSSL headers or libcrypto the package installs
anyway and meshguard.dataplane.fastpath uses its pure Python fallback; the build then prints
one line saying why (pip shows build output with `pip install -v .`), and `meshguard version`
names the data path in use. Everything else (name, version, dependencies) is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FASTPATH = "meshguard.dataplane._fastpath"

# (source, what failing to build it means); compiled in this order before the extension
_PROBES = (
    ("int main(void) { return 0; }\n", "no working C compiler"),
    ("#include <Python.h>\nint main(void) { return 0; }\n", "no Python headers (python3-dev)"),
    ("#include <openssl/evp.h>\nint main(void) { return 0; }\n",
     "no OpenSSL headers (libssl-dev)"),
)


class OptionalBuildExt(build_ext):
    """build_ext that skips the C data path, with one line saying why, where it cannot build."""

    def build_extension(self, ext: Extension) -> None:
        if ext.name != FASTPATH:
            super().build_extension(ext)
            return
        reason = self._missing(ext)
        if reason is None:
            try:
                super().build_extension(ext)
                return
            except Exception as exc:  # CompileError, LinkError, OSError: all mean "no C"
                reason = f"compiling {ext.sources[0]} failed: {_first_line(exc)}"
        print(f"meshguard: building without the C data path ({reason}): "
              "the pure Python data plane will be used", file=sys.stderr, flush=True)

    def _missing(self, ext: Extension) -> str | None:
        """What this machine lacks to build `ext`, or None."""
        compiler = self.compiler
        include_dirs = [*ext.include_dirs, *(self.include_dirs or [])]
        with tempfile.TemporaryDirectory() as tmp:
            objects: list[str] = []
            for number, (source, reason) in enumerate(_PROBES):
                path = Path(tmp, f"probe{number}.c")
                path.write_text(source)
                try:
                    objects = compiler.compile([str(path)], output_dir=tmp,
                                               include_dirs=include_dirs)
                except Exception:
                    cc = os.environ.get("CC")
                    return f"{reason}, CC={cc}" if number == 0 and cc else reason
            # link the last probe's object against libcrypto the way the extension is linked
            try:
                compiler.link_shared_object(objects, str(Path(tmp, "probe.so")),
                                            libraries=list(ext.libraries))
            except Exception:
                return "no libcrypto to link against (libssl-dev)"
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


setup(
    ext_modules=[
        Extension(
            FASTPATH,
            ["src/meshguard/dataplane/_fastpath.c"],
            # included by _fastpath.c (one translation unit): rebuild when it changes
            depends=["src/meshguard/dataplane/_fastpath_policy.c"],
            libraries=["crypto"],
            extra_compile_args=["-O3", "-Wall"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
    # generated from the argument parser by `./dev man` (tests/test_packaging.py keeps them
    # up to date); installed under the prefix, where man, bash-completion and zsh look
    data_files=[
        ("share/man/man8", ["man/meshguard.8"]),
        ("share/bash-completion/completions", ["completions/meshguard"]),
        ("share/zsh/site-functions", ["completions/_meshguard"]),
    ],
)
