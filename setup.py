"""Build the optional C data-plane extension; without a compiler or OpenSSL headers the
package installs anyway and meshguard.dataplane.fastpath uses its pure Python fallback."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meshguard.dataplane._fastpath",
            ["src/meshguard/dataplane/_fastpath.c"],
            # included by _fastpath.c (one translation unit): rebuild when it changes
            depends=["src/meshguard/dataplane/_fastpath_policy.c"],
            libraries=["crypto"],
            extra_compile_args=["-O3", "-Wall"],
            optional=True,
        )
    ]
)
