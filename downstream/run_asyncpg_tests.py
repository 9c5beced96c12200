"""Run asyncpg's own ``tests/test_pool.py`` against ``asyncpool.asyncpg.create_pool``.

The tests come from the source distribution of the asyncpg version that is
installed (downloaded once into ``downstream/.cache``), and run against the
server in ``PGHOST``/``PGPORT``/``PGUSER`` (default: ``127.0.0.1:5432`` as
``postgres``). Extra arguments go to pytest::

    python downstream/run_asyncpg_tests.py            # what nox -s downstream runs
    python downstream/run_asyncpg_tests.py -k pool_04
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def asyncpg_tests() -> Path:
    """The ``tests`` folder of the installed asyncpg's source distribution,
    downloaded once with pip (so through the indexes pip is configured for)."""
    release = version("asyncpg")
    target = CACHE / f"asyncpg-{release}"
    if not (target / "tests" / "test_pool.py").exists():
        CACHE.mkdir(exist_ok=True)
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*download, f"asyncpg=={release}", "--dest", str(CACHE)], check=True)
        with tarfile.open(CACHE / f"asyncpg-{release}.tar.gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(f"asyncpg-{release}/tests/")]
            archive.extractall(CACHE, members=members)  # asyncpg's sdist from the index, its tests only
    return target / "tests"


def main(argv: list[str]) -> int:
    tests = asyncpg_tests()
    env = {
        **os.environ,
        "PGHOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PGPORT": os.environ.get("PGPORT", "5432"),
        "PGUSER": os.environ.get("PGUSER", "postgres"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(tests / "test_pool.py"),
        "-c",
        str(HERE / "pytest.ini"),
        "-p",
        "asyncpg_plugin",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(tests.parent),
        "--timeout",
        "60",
        "--timeout-method",
        "thread",
        "-q",
        "-ra",
        *argv,
    ]
    return subprocess.run(command, env=env, cwd=tests.parent, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
