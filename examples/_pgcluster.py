"""A throwaway PostgreSQL cluster for examples and tests.

:class:`TemporaryCluster` is a context manager that runs ``initdb`` in a fresh
temporary directory, starts a server on a free loopback port with trust
authentication, and on exit stops it and deletes the directory again, also
when the body raises or is interrupted with Ctrl-C::

    from _pgcluster import TemporaryCluster, find_server_bindir

    if find_server_bindir() is not None:
        with TemporaryCluster() as cluster:
            print(cluster.dsn)  # postgresql://postgres@127.0.0.1:PORT/postgres

The server binaries (``initdb``, ``pg_ctl``) are looked up in
``/usr/lib/postgresql/*/bin`` (newest version first, the Debian/Ubuntu layout)
and then on ``PATH``. PostgreSQL refuses to run as root, so when this process
is root the binaries run as the ``postgres`` OS user (through ``runuser``, or
``su`` where ``runuser`` is missing) and the directory is handed to that user.

The cluster is tuned for speed, not durability (``fsync=off``): it holds only
data that is thrown away a moment later.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "ClusterError",
    "TemporaryCluster",
    "find_server_bindir",
]

#: The OS user that owns the cluster when this process runs as root.
SERVICE_USER = "postgres"

#: Database superuser created by ``initdb`` (independent of the OS user).
SUPERUSER = "postgres"

_SERVER_TOOLS = ("initdb", "pg_ctl")

# Settings that make a disposable cluster start and write fast. Safe only
# because nothing in it needs to survive a crash.
_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
}


class ClusterError(RuntimeError):
    """Raised when the temporary cluster cannot be created, started or stopped."""


def find_server_bindir() -> Path | None:
    """Return the directory holding ``initdb`` and ``pg_ctl``, or ``None``.

    ``/usr/lib/postgresql/<version>/bin`` is preferred (highest version first)
    because Debian keeps the server binaries there, off ``PATH``; otherwise
    the directory of ``initdb`` found on ``PATH`` is used.
    """
    candidates: list[Path] = []
    debian_root = Path("/usr/lib/postgresql")
    if debian_root.is_dir():
        versions = [p for p in debian_root.iterdir() if p.is_dir()]
        versions.sort(key=_version_key, reverse=True)
        candidates.extend(p / "bin" for p in versions)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in _SERVER_TOOLS):
            return directory
    return None


class TemporaryCluster:
    """A PostgreSQL server in a temporary directory, alive inside a ``with``.

    :param bindir: directory with ``initdb`` and ``pg_ctl``; found with
        :func:`find_server_bindir` when omitted.
    :param port: TCP port on 127.0.0.1; a free one is picked when omitted.
    :param startup_timeout: seconds to wait for the server to accept
        connections.

    After :meth:`start` (or entering the ``with`` block), :attr:`dsn`,
    :attr:`port` and :attr:`directory` describe the running server. The server
    listens on 127.0.0.1 only, and its Unix socket lives inside
    :attr:`directory`, so it never collides with a system-wide server.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        port: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._bindir = bindir
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._directory: Path | None = None
        self._port: int | None = None
        self._running = False

    # -- public state ------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The temporary directory (data directory, socket and server log)."""
        if self._directory is None:
            raise ClusterError("the cluster has not been started")
        return self._directory

    @property
    def port(self) -> int:
        """The TCP port the server listens on, on 127.0.0.1."""
        if self._port is None:
            raise ClusterError("the cluster has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """A libpq/asyncpg URL for the ``postgres`` database as superuser."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        """``True`` between a successful :meth:`start` and :meth:`stop`."""
        return self._running

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Create the cluster and start the server; clean up if that fails."""
        if self._directory is not None:
            raise ClusterError("the cluster was already started")
        bindir = self._bindir or find_server_bindir()
        if bindir is None:
            raise ClusterError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH"
            )
        self._bindir = bindir
        self._directory = self._make_directory()
        try:
            self._initdb()
            self._start_server()
        except BaseException:
            # Also on KeyboardInterrupt: a half-started server must not
            # outlive us, and neither should its directory. A failure to
            # stop must not hide why starting failed.
            with contextlib.suppress(ClusterError):
                self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (if running) and delete the directory. Idempotent."""
        directory = self._directory
        if directory is None:
            return
        try:
            if (directory / "data" / "postmaster.pid").exists():
                self._stop_server()
        finally:
            self._running = False
            self._directory = None
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> TemporaryCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on 127.0.0.1:{self._port}" if self._running else "stopped"
        return f"<TemporaryCluster {state}>"

    # -- steps ---------------------------------------------------------------

    def _make_directory(self) -> Path:
        as_root = os.geteuid() == 0
        parent = tempfile.gettempdir()
        if as_root and not _traversable_by_others(Path(parent)):
            # TMPDIR may live under /root, which the postgres user cannot enter.
            parent = "/tmp"
        directory = Path(tempfile.mkdtemp(prefix="asyncpool-pg-", dir=parent))
        if as_root:
            try:
                account = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                shutil.rmtree(directory, ignore_errors=True)
                raise ClusterError(
                    f"running as root, but there is no {SERVICE_USER!r} OS user to run the PostgreSQL server as"
                ) from None
            os.chown(directory, account.pw_uid, account.pw_gid)
        return directory

    def _initdb(self) -> None:
        data = self.directory / "data"
        self._run(
            [
                "initdb",
                "--pgdata",
                str(data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            what="initdb",
        )

    def _start_server(self) -> None:
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port()
            settings = {
                "listen_addresses": "127.0.0.1",
                "port": str(port),
                "unix_socket_directories": str(self.directory),
                **_SERVER_SETTINGS,
            }
            # pg_ctl hands -o to a shell, hence the quoting.
            options = shlex.join(token for name, value in settings.items() for token in ("-c", f"{name}={value}"))
            try:
                self._run(
                    [
                        "pg_ctl",
                        "start",
                        "--pgdata",
                        str(self.directory / "data"),
                        "--log",
                        str(self.directory / "server.log"),
                        "--wait",
                        "--timeout",
                        str(int(self._startup_timeout)),
                        "-o",
                        options,
                    ],
                    what="pg_ctl start",
                    timeout=self._startup_timeout + 10,
                )
            except ClusterError:
                # The picked port may have been taken between probing and
                # binding; try another one before giving up.
                if attempt == attempts:
                    raise
                continue
            self._port = port
            self._running = True
            return

    def _stop_server(self) -> None:
        data = str(self.directory / "data")
        try:
            self._run(
                ["pg_ctl", "stop", "--pgdata", data, "--mode", "fast", "--wait"],
                what="pg_ctl stop",
                timeout=60,
            )
        except ClusterError:
            self._run(
                ["pg_ctl", "stop", "--pgdata", data, "--mode", "immediate", "--wait"],
                what="pg_ctl stop",
                timeout=60,
            )

    def _run(self, argv: Sequence[str], *, what: str, timeout: float = 120) -> None:
        """Run one server tool to completion, even across Ctrl-C.

        Killing ``initdb`` or ``pg_ctl`` halfway would orphan the server
        processes they spawned (``runuser`` does not pass SIGKILL on), and
        the directory could then not be cleaned up. So the tool runs in its
        own session, out of reach of the terminal's Ctrl-C, and an interrupt
        that arrives meanwhile is re-raised only once the step is done.
        """
        assert self._bindir is not None
        command = [str(self._bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = _as_service_user(command)
        deadline = time.monotonic() + timeout
        interrupted = False
        try:
            proc = subprocess.Popen(
                command,
                cwd=self.directory,  # the postgres user may not enter our cwd
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise ClusterError(f"{what} failed: {exc}") from exc
        with proc:
            while True:
                try:
                    stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 0.0))
                    break
                except KeyboardInterrupt:
                    interrupted = True
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise ClusterError(f"{what} did not finish within {timeout:.0f} s") from None
        if interrupted:
            raise KeyboardInterrupt
        if proc.returncode != 0:
            details = (stderr or stdout).strip()
            log_tail = self._log_tail()
            message = f"{what} failed (exit {proc.returncode}): {details}"
            if log_tail:
                message += f"\nserver log:\n{log_tail}"
            raise ClusterError(message)

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.directory / "server.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


def _as_service_user(command: list[str]) -> list[str]:
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", SERVICE_USER, "--", *command]
    su = shutil.which("su")
    if su is not None:
        return [su, SERVICE_USER, "-s", "/bin/sh", "-c", shlex.join(command)]
    raise ClusterError(
        f"running as root, and neither runuser nor su is available to run "
        f"the PostgreSQL server as the {SERVICE_USER!r} user"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    for directory in (path, *path.parents):
        try:
            mode = directory.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)
