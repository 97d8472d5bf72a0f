"""A PostgreSQL server of the test's own (Debian's package), as ironic's database.

:class:`PostgresServer` makes a fresh cluster in a directory with Debian's ``initdb``
(run as the ``postgres`` system user: PostgreSQL refuses root), starts ``postgres`` on
127.0.0.1 and a free port with its socket in that directory too, creates a database and
an owner with a password for ironic, and stops the server with ``pg_ctl stop``. Nothing
of the machine's own clusters (``pg_ctlcluster``, ``/etc/postgresql``) is touched.
``tools/setup-ironic`` installs the package and the driver ironic connects with
(psycopg2).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port

from .launcher import IronicError

SYSTEM_USER = "postgres"
START_TIMEOUT = 60.0


def postgres_bin() -> Path:
    """Debian's server programs (``/usr/lib/postgresql/<major>/bin``), the newest major."""
    root = Path("/usr/lib/postgresql")
    found = sorted(
        (path for path in root.glob("*/bin") if (path / "initdb").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not found:
        raise IronicError(
            "no PostgreSQL server programs under /usr/lib/postgresql: run tools/setup-ironic"
            " (it installs Debian's postgresql package)"
        )
    return found[-1]


def cluster_dir() -> Path:
    """A fresh directory the ``postgres`` user can reach: pytest's own temporary
    directories sit under a root-only (0700) one."""
    return Path(tempfile.mkdtemp(prefix="tacet-postgres-"))


@dataclass
class PostgresServer:
    """One throw-away cluster, owned by the ``postgres`` system user; ``remove()`` deletes
    it with its directory."""

    workdir: Path = field(default_factory=cluster_dir)
    database: str = "ironic"
    user: str = "ironic"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    bin: Path = field(default_factory=postgres_bin)

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL ironic's ``[database] connection`` takes."""
        return (
            f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}"
            f"/{self.database}"
        )

    def _as_postgres(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        account = pwd.getpwnam(SYSTEM_USER)
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.workdir,
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            **kwargs,  # type: ignore[call-overload]
        )
        return done  # type: ignore[no-any-return]

    def start(self) -> None:
        account = pwd.getpwnam(SYSTEM_USER)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chown(self.workdir, account.pw_uid, account.pw_gid)
        self.port = self.port or free_port()
        secret = self.workdir / "superuser-password"
        secret.write_text(secrets.token_hex(16) + "\n")
        os.chown(secret, account.pw_uid, account.pw_gid)
        secret.chmod(0o600)
        done = self._as_postgres(
            [
                str(self.bin / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                SYSTEM_USER,
                "--auth",
                "scram-sha-256",
                "--pwfile",
                str(secret),
                "--encoding",
                "UTF8",
                "--no-sync",  # a throw-away cluster
            ]
        )
        if done.returncode != 0:
            raise IronicError(f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        # Local (socket) connections as the postgres system user need no password.
        (self.data / "pg_hba.conf").write_text(
            "local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.workdir}",
                "-c fsync=off",  # a throw-away cluster: speed over durability
                "-c synchronous_commit=off",
                "-c max_connections=200",
            ]
        )
        done = self._as_postgres(
            [
                str(self.bin / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.data),
                "--log",
                str(self.log),
                "--options",
                options,
                "--wait",
                "--timeout",
                str(int(START_TIMEOUT)),
            ]
        )
        if done.returncode != 0:
            raise IronicError(f"PostgreSQL did not start:\n{done.stderr[-2000:]}\n{self.tail()}")
        self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}")

    def psql(self, statement: str, database: str = "postgres") -> list[list[str]]:
        """Rows of ``statement`` run as the superuser over the cluster's own socket."""
        done = self._as_postgres(
            [
                str(self.bin / "psql"),
                "--host",
                str(self.workdir),
                "--port",
                str(self.port),
                "--username",
                SYSTEM_USER,
                "--dbname",
                database,
                "--no-psqlrc",
                "--tuples-only",
                "--no-align",
                "--field-separator",
                "|",
                "--set",
                "ON_ERROR_STOP=1",
                "--command",
                statement,
            ]
        )
        if done.returncode != 0:
            raise IronicError(f"psql {statement.split()[0]} failed: {done.stderr.strip()}")
        return [line.split("|") for line in done.stdout.splitlines() if line]

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "stop", "--pgdata", str(self.data), "--mode", "fast"]
        )
        deadline = time.monotonic() + 30
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def tail(self, lines: int = 40) -> str:
        if not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
