"""Build the optional C data-plane extension; without a compiler or OpenSSL headers the
package installs anyway and meshguard.dataplane.fastpath uses its pure Python fallback."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meshguard.dataplane._fastpath",
            ["src/meshguard/dataplane/_fastpath.c"],
            libraries=["crypto"],
            extra_compile_args=["-O3", "-Wall"],
            optional=True,
        )
    ]
)
