"""Real servers for the tests: PostgreSQL 15 on loopback in a temporary data directory, `mlflow server` on
it with served artifacts, and a Ray head node started apart (`ray start --head`) as a remote cluster is.
All stop at the end; missing binaries skip with the reason.

`mlflow server` runs the README's own command line ("Many machines", step 2), with its addresses, password and
folder replaced by loopback ones (``readme_server_command``): the tests and the benchmarks start the server a
team is told to start.

PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_DIRS = ("/usr/lib/postgresql/15/bin",)
PG_USER = "postgres"  # Debian's system user, for running as root
DB_USER = "clipprobe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str | None:
    for folder in PG_DIRS:
        if (Path(folder) / name).exists():
            return str(Path(folder) / name)
    return shutil.which(name)


@dataclass
class Postgres:
    """A running PostgreSQL: ``url(db)`` is the SQLAlchemy URL of a database, ``new_database()`` makes one."""

    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.getuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + pg_ctl start on a free loopback port (trust auth, loopback only), stopped and removed after."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/15/bin or PATH: "
                    "apt-get install postgresql-15")
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver: pip install 'clipprobe[postgres]'")
    if os.getuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: PostgreSQL cannot be started")
    folder = Path(tempfile.mkdtemp(prefix="clipprobe-pg-"))
    data, port = folder / "data", free_port()
    if os.getuid() == 0:
        shutil.chown(folder, PG_USER)
    subprocess.run(_as_pg_user([initdb, "-D", str(data), "-U", DB_USER, "-A", "trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_pg_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "-t", "60",
                                "start"]), check=True, capture_output=True)
    try:
        yield Postgres(port, folder)
    finally:
        subprocess.run(_as_pg_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def readme_server_line(readme: Path = REPO / "README.md") -> str:
    """The README's `mlflow server ...` command line, continuation lines folded."""
    found = re.search(r"^mlflow server (?:[^\n]*\\\n)*[^\n]*$", readme.read_text(), re.M)
    assert found, f"{readme}: no `mlflow server` command line"
    return re.sub(r"\\\n\s*", " ", found.group(0)).strip()


# MLflow 3's server starts a job runner and seven huey consumers for its GenAI jobs (judges, prompt optimisation)
# unless told not to. clipprobe uses none of them; started, they spend about 20 s of CPU in the seconds after the
# server first answers, which on 2 cores slowed the first fits 2x and doubled the server's measured CPU per fit
# (benchmarks/results/bench_tracking_client.md). The tests and the benchmarks run the server without them.
SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

# How each option of the README's server line is set here: a value of our own, or None to keep the README's.
SERVER_OPTIONS = {"--backend-store-uri": "backend", "--artifacts-destination": "artifacts", "--host": "127.0.0.1",
                  "--port": "port", "--workers": "workers", "--serve-artifacts": None,
                  "--allowed-hosts": "127.0.0.1:*"}  # any port: the benchmarks reach the server through delay proxies


def readme_server_command(backend: str, artifacts: Path, port: int, workers: int | None = None,
                          line: str | None = None) -> list[str]:
    """The README's server line run by this Python on loopback: ``backend``, ``artifacts`` and ``port`` in place of
    the reader's database, folder and address; ``workers`` in place of the README's count where given. An option
    the README adds that this does not know fails here, so the tests never run a server other than the README's."""
    words = shlex.split(line or readme_server_line())
    assert words[:2] == ["mlflow", "server"], words
    values = {"backend": backend, "artifacts": str(artifacts), "port": str(port)}
    out, k = [sys.executable, "-m", "mlflow", "server"], 2
    while k < len(words):
        option = words[k]
        assert option in SERVER_OPTIONS, f"README's mlflow server line: {option} is not known to tests/servers.py"
        ours = SERVER_OPTIONS[option]
        if ours is None:  # a flag
            out.append(option)
            k += 1
            continue
        if ours == "workers":
            value = str(workers) if workers is not None else words[k + 1]
        else:
            value = values.get(ours, ours)
        out += [option, value]
        k += 2
    return out


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, timeout: float = 180, workers: int = 2) -> Iterator[str]:
    """The README's ``mlflow server`` on ``backend`` with served artifacts in ``artifacts``, on loopback with
    ``workers`` workers (2 cores here); yields its http URL."""
    port = free_port()
    log = open(artifacts.parent / f"mlflow-server-{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        readme_server_command(backend, artifacts, port, workers),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **SERVER_ENV})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError(f"mlflow server did not start: {(artifacts.parent / log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@dataclass
class RayHead:
    """A Ray head node of its own: ``address`` (host:port of its GCS) and ``client`` (``ray://`` Ray Client)."""

    address: str
    client: str
    folder: Path

    def client_server_logs(self, chars: int = 1500) -> str:
        """The end of each Ray Client server log of this head (the proxier's and each client's own): what a
        failed ``ray://`` connection leaves, shown in the failing test's message."""
        logs = sorted(self.folder.glob("t/session_*/logs/ray_client_server*.err"))
        return "\n".join(f"--- {f.name}:\n{f.read_text(errors='replace')[-chars:]}" for f in logs) or "(no client logs)"


@contextlib.contextmanager
def ray_head(env: dict[str, str] | None = None, cpus: int = 2, timeout: float = 240) -> Iterator[RayHead]:
    """``ray start --head --block`` on loopback (GCS and Ray Client ports free, its own temp dir), in a new
    process group; stopped by signalling that group (never ``ray stop``, which stops every Ray on the
    machine). ``env`` is the environment its workers get (they inherit the head's)."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'clipprobe[ray]'")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    folder = Path(tempfile.mkdtemp(prefix="cpray-", dir="/tmp"))  # Ray's socket paths must stay short
    port, client_port = free_port(), free_port()
    log = open(folder / "head.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--ray-client-server-port", str(client_port), "--num-cpus", str(cpus), "--temp-dir", str(folder / "t"),
         "--include-dashboard", "false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # a Ray Client connection starts a server process of its own; Ray waits 30 s for its channel, which
        # a loaded 2-core machine can miss: give it 120 s
        env={**os.environ, "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "120", **(env or {})})
    try:
        deadline = time.time() + timeout
        while True:  # up once both ports answer
            up = True
            for p in (port, client_port):
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=1).close()
                except OSError:
                    up = False
            if up:
                break
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError(f"ray start did not come up: {(folder / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield RayHead(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", folder)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as pg:
        yield pg


@pytest.fixture
def postgres_store(postgres, tmp_path, monkeypatch):
    """A fresh PostgreSQL database as the tracking store (artifacts in tmp_path), like ``tracking_store``."""
    from stores import tracking_at

    with tracking_at(postgres.new_database(), tmp_path, monkeypatch) as uri:
        yield uri


@pytest.fixture
def server_store(postgres, tmp_path, monkeypatch):
    """``mlflow server`` on a fresh PostgreSQL database with served artifacts, as the tracking store."""
    from stores import tracking_at

    artifacts = tmp_path / "served-artifacts"
    artifacts.mkdir()
    with mlflow_server(postgres.new_database(), artifacts) as url, tracking_at(url, tmp_path, monkeypatch):
        yield url
