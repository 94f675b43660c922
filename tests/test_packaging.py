"""Packaging: the sdist, the wheel built from it, a fresh virtualenv running it, the build
without a C compiler or OpenSSL headers, one version everywhere, and the generated man page
and shell completions.

One module-scoped build (about 10 s of the module's 25 on an idle machine: `python -m build
--no-isolation` makes the sdist, then the wheel from the unpacked sdist, compiling the C data
path once) serves every test here; all of them run in one pytest-xdist worker (`xdist_group`),
so the build happens once.

The fresh virtualenv gets the wheel with `pip install --no-deps` and finds the runtime
dependencies through one .pth line naming the dev virtualenv's site-packages: the tests run
offline, nothing is downloaded, and the dependencies are exactly the ones the dev environment
tests against. (`--system-site-packages` would not do: the dev environment is itself a
virtualenv, not the system Python; a wheelhouse would need the dependencies' wheels, which an
installed environment does not keep.) A .pth path line adds that directory only: the .pth
files inside it, such as an editable meshguard's, are not run, so `import meshguard` in the
fresh environment finds the installed wheel, which a test checks.
"""

from __future__ import annotations

import email.parser
import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshguard import __version__
from meshguard.cli.completion_command import SHELLS, completion_script
from meshguard.cli.generated_files import GENERATED, MAN_PAGE, MAN_SECTION, stale
from meshguard.cli.main import COMMANDS

pytestmark = pytest.mark.xdist_group("packaging")

REPO = Path(__file__).resolve().parent.parent
FALLBACK = re.compile(r"^meshguard: building without the C data path \((?P<reason>.+)\): the "
                      r"pure Python data plane will be used$", re.MULTILINE)
# what the working tree holds that a build must not see (an in-place _fastpath .so among them)
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "*.so", "__pycache__", ".*_cache",
                                     ".hypothesis", "build", "dist", "*.egg-info", "results")


def _env(**extra: str) -> dict[str, str]:
    """The environment for a build or an installed `meshguard`: no PYTHONPATH (which points
    at this checkout's src/) and no MESHGUARD_PURE_PYTHON."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MESHGUARD_PURE_PYTHON", "CC")}
    env.update(extra)
    return env


def _run(argv: list[str | Path], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], env=_env(**extra), capture_output=True,
                          text=True, timeout=240, check=False)


def _build(source: Path, out: Path, *args: str, **extra: str) -> str:
    """`python -m build` in `source` (the dev environment's setuptools, offline); its output."""
    proc = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, *args, source],
                **extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _unpack_sdist(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    (top,) = into.iterdir()
    return top


def _venv(path: Path, wheel: Path) -> Path:
    """A fresh virtualenv with `wheel` installed and the dev environment's packages as its
    dependencies (see the module docstring); returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True,
                   timeout=60)
    proc = _run([sys.executable, "-m", "pip", "--python", path / "bin" / "python", "install",
                 "--no-deps", "--no-index", "--disable-pip-version-check", "-q", wheel])
    assert proc.returncode == 0, proc.stderr
    site = _run([path / "bin" / "python", "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "meshguard-test-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin"


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path
    bin: Path  # of a fresh virtualenv with the wheel installed
    output: str  # what the build printed


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "meshguard"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    output = _build(source, tmp / "dist")  # the sdist, then the wheel from the unpacked sdist
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    (wheel,) = (tmp / "dist").glob("*.whl")
    return Built(sdist, wheel, _venv(tmp / "venv", wheel), output)


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_sdist_carries_the_c_sources_docs_contrib_and_generated_files(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = {
        "setup.py", "pyproject.toml", "README.md", "MANIFEST.in",
        "src/meshguard/dataplane/_fastpath.c", "src/meshguard/dataplane/_fastpath_policy.c",
        "src/meshguard/dataplane/_fastpath.pyi",
        *(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")),
        *(p.relative_to(REPO).as_posix() for p in (REPO / "contrib").iterdir()),
        *(rel.as_posix() for rel in GENERATED),
    }
    assert wanted - names == set()
    assert not [n for n in names if n.endswith((".so", ".pyc"))]


def test_wheel_from_the_sdist_holds_the_c_extension_and_the_data_files(built: Built) -> None:
    names = _wheel_names(built.wheel)
    assert [n for n in names if re.fullmatch(r"meshguard/dataplane/_fastpath\..*\.so", n)]
    assert "meshguard/dataplane/_fastpath.pyi" in names
    assert not [n for n in names if n.endswith(".c")]  # sources are for the sdist only
    data = f"meshguard-{__version__}.data/data/"
    for installed in (f"share/man/man{MAN_SECTION}/meshguard.{MAN_SECTION}",
                      "share/bash-completion/completions/meshguard",
                      "share/zsh/site-functions/_meshguard"):
        assert data + installed in names
    assert not FALLBACK.search(built.output)


def test_fresh_venv_runs_the_installed_wheel_with_the_c_data_path(built: Built) -> None:
    version = _run([built.bin / "meshguard", "version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.splitlines() == [f"meshguard {__version__}",
                                           "data path: C (meshguard.dataplane._fastpath)"]
    forced = _run([built.bin / "meshguard", "version"], MESHGUARD_PURE_PYTHON="1")
    assert forced.stdout.splitlines()[1] == "data path: pure Python (MESHGUARD_PURE_PYTHON=1)"
    helped = _run([built.bin / "meshguard", "--help"])
    assert helped.returncode == 0, helped.stderr
    assert all(name in helped.stdout for name in COMMANDS)
    where = _run([built.bin / "python", "-c", "import meshguard.dataplane._fastpath as c, "
                  "meshguard.dataplane.fastpath as fp; print(c.__file__, fp.IMPLEMENTATION)"],
                 PYTHONSAFEPATH="1")
    assert where.returncode == 0, where.stderr
    path, impl = where.stdout.split()
    assert Path(path).is_relative_to(built.bin.parent) and impl == "c"
    # the man page and completions are installed under the environment's prefix
    assert (built.bin.parent / "share" / "man" / f"man{MAN_SECTION}" /
            f"meshguard.{MAN_SECTION}").read_text() == (REPO / MAN_PAGE).read_text()


def test_one_version_in_package_cli_wheel_metadata_and_man_page(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as z:
        metadata = z.read(f"meshguard-{__version__}.dist-info/METADATA").decode()
    assert email.parser.Parser().parsestr(metadata)["Version"] == __version__
    assert built.wheel.name.startswith(f"meshguard-{__version__}-")
    assert built.sdist.name == f"meshguard-{__version__}.tar.gz"
    flag = _run([built.bin / "meshguard", "--version"])
    assert flag.stdout.strip() == f"meshguard {__version__}"
    first = _run([built.bin / "meshguard", "version"]).stdout.splitlines()[0]
    assert first == f"meshguard {__version__}"
    title = (REPO / MAN_PAGE).read_text().splitlines()[0]
    assert title == (f'.TH MESHGUARD "{MAN_SECTION}" "" "meshguard {__version__}" '
                     '"System Administration"')
    # pyproject.toml takes the version from the package; it states none of its own
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "meshguard.__version__"}


def test_build_without_a_compiler_says_so_and_installs_the_pure_python_data_path(
        built: Built, tmp_path: Path) -> None:
    source = _unpack_sdist(built.sdist, tmp_path / "src")
    output = _build(source, tmp_path / "dist", "--wheel", CC="/bin/false")
    found = FALLBACK.findall(output)
    assert found == ["no working C compiler, CC=/bin/false"], output[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = _wheel_names(wheel)
    assert not [n for n in names if n.endswith(".so")]
    assert "meshguard/dataplane/fastpath.py" in names
    bin_dir = _venv(tmp_path / "venv", wheel)
    version = _run([bin_dir / "meshguard", "version"])
    assert version.stdout.splitlines() == [
        f"meshguard {__version__}", "data path: pure Python (the C extension is not built)"]
    # an extension that is there but cannot load (here: not a shared object at all)
    package = Path(_run([bin_dir / "python", "-c", "import meshguard.dataplane as d; "
                      "print(d.__path__[0])"]).stdout.strip())
    (package / f"_fastpath{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"garbage")
    broken = _run([bin_dir / "meshguard", "version"]).stdout.splitlines()
    assert broken[1].startswith("data path: pure Python (the C extension does not load: ")


def test_build_without_openssl_headers_names_them(built: Built, tmp_path: Path) -> None:
    # a compiler that works, except that no OpenSSL header exists
    cc = tmp_path / "cc-without-openssl"
    cc.write_text("#!/bin/sh\n"
                  'for a in "$@"; do case "$a" in *.c) if grep -q "openssl/" "$a"; then\n'
                  '  echo "$a: fatal error: openssl/evp.h: No such file or directory" >&2\n'
                  "  exit 1; fi;; esac; done\n"
                  'exec gcc "$@"\n')
    cc.chmod(0o755)
    source = _unpack_sdist(built.sdist, tmp_path / "src")
    output = _build(source, tmp_path / "dist", "--wheel", CC=str(cc))
    assert FALLBACK.findall(output) == ["no OpenSSL headers (libssl-dev)"], output[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert not [n for n in _wheel_names(wheel) if n.endswith(".so")]


def test_committed_man_page_and_completions_are_up_to_date() -> None:
    old = [rel.as_posix() for rel in stale(REPO)]
    assert not old, f"{', '.join(old)}: stale (generated from the parser): run ./dev man"


def test_man_page_section_agrees_with_the_systemd_unit_and_setup() -> None:
    unit = (REPO / "contrib" / "meshguard.service").read_text()
    assert re.findall(r"^Documentation=(.*)$", unit, re.M) == [f"man:meshguard({MAN_SECTION})"]
    assert f'("share/man/man{MAN_SECTION}", ["{MAN_PAGE.as_posix()}"])' in (
        REPO / "setup.py").read_text()


def test_man_page_documents_every_command_and_option() -> None:
    page = (REPO / MAN_PAGE).read_text()
    for name in COMMANDS:
        assert f".SH COMMAND \\fI\\,'meshguard {_roff(name)}'\\/\\fR\n" in page
    for option in ("--seed", "--interface", "--port", "--json"):
        assert f"\\fB{_roff(option)}\\fR" in page


def _roff(text: str) -> str:
    return text.replace("-", "\\-")


def _completion_shell(shell: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shell, "-c" if shell == "bash" else "-fc", script],
                          env=_env(PYTHONPATH=str(REPO / "src"), MESHGUARD=sys.executable),
                          capture_output=True, text=True, timeout=60, check=False)


def test_bash_sources_the_completion_and_completes_commands_and_options() -> None:
    proc = _completion_shell("bash", """
        source <("$MESHGUARD" -m meshguard completion bash) || exit 1
        complete -p meshguard || exit 1
        COMP_WORDS=(meshguard sta); COMP_CWORD=1; _shtab_meshguard; echo "1:${COMPREPLY[*]}"
        COMP_WORDS=(meshguard up --se); COMP_CWORD=2; _shtab_meshguard; echo "2:${COMPREPLY[*]}"
        COMP_WORDS=(meshguard completion ''); COMP_CWORD=2; _shtab_meshguard
        echo "3:${COMPREPLY[*]}"
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "complete -o bashdefault -F _shtab_meshguard meshguard"
    assert lines[1:] == ["1:status", "2:--seed", "3:bash zsh"]


def test_zsh_completion_parses_and_registers() -> None:
    script = completion_script("zsh")
    assert script.startswith("#compdef meshguard\n")
    for name in COMMANDS:
        assert f"\n    {name}:" in script
    if shutil.which("zsh") is None:  # ./dev installs zsh; elsewhere the structure must do
        return
    proc = _completion_shell("zsh", """
        autoload -U compinit && compinit -u -D
        eval "$("$MESHGUARD" -m meshguard completion zsh)" || exit 1
        print -r -- "${_comps[meshguard]}"
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "_shtab_meshguard"


def test_completion_command_rejects_other_shells() -> None:
    proc = _run([sys.executable, "-m", "meshguard", "completion", "fish"],
                PYTHONPATH=str(REPO / "src"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("meshguard: error: argument SHELL: invalid choice: 'fish'")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert SHELLS == ("bash", "zsh")
