"""Real services for the cluster tests, all on 127.0.0.1: a throwaway PostgreSQL cluster,
an MLflow tracking server in front of it (started with `vaelab server`), and a multi-node
Ray cluster made of `ray start --block` processes, and an S3 server (moto) with a relay in front.

Every process started here runs in a session of its own and is stopped through that
process group (or by the PID of a process whose command line names our own temporary
directory): never `ray stop`, `pkill` or anything else that would reach the Ray clusters
other people run on the same machine.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

VENV_BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: this venv's bin first on PATH, no tracking URI or
    Ray address of the caller's, no usage statistics or telemetry sent anywhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def vaelab_command() -> list[str]:
    script = VENV_BIN / "vaelab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vaelab.cli"]


def stop_group(proc: Optional[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Signal the process group `proc` leads (it was started with start_new_session=True),
    then SIGKILL whatever is left of it after `timeout`."""
    if proc is None:
        return
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not group_members(proc.pid):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _stat(pid: int) -> Optional[list[str]]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (a unique temporary path of ours)."""
    me = os.getpid()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and text in cmdline(int(e))]


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, local address, port) of every listening TCP socket the processes hold,
    read from /proc (no psutil): /proc/net/tcp{,6} give inode -> address, /proc/PID/fd
    gives inode -> pid."""
    listen: dict[str, tuple[str, int]] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != "0A":  # 0A = LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            listen[cols[9]] = (_decode_ip(hex_ip, width), int(hex_port, 16))
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            match = re.fullmatch(r"socket:\[(\d+)\]", target)
            if match and match.group(1) in listen:
                out.append((pid, *listen[match.group(1)]))
    return out


def _decode_ip(hex_ip: str, width: int) -> str:
    raw = bytes.fromhex(hex_ip)
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # four little-endian words
    return socket.inet_ntop(socket.AF_INET6, words)


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def short_tmpdir(prefix: str) -> Path:
    """A short directory under /tmp (Ray's unix socket paths must stay under 107 bytes),
    readable by the postgres user."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Optional[Path]:
    """Where initdb / pg_ctl live: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def postgres_missing_reason() -> Optional[str]:
    if postgres_bin_dir() is None:
        return "PostgreSQL server binaries not found (apt-get install -y postgresql)"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
        return "running as root needs `runuser` and a `postgres` user to run initdb (apt-get install -y postgresql)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[dev]')"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:port with password authentication."""

    root: Path
    port: int = 0
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    database: str = "mlflow"
    user: str = "vaelab"

    def __post_init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = self.port or free_port()

    def _cmd(self, *argv: str) -> list[str]:
        exe = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:  # initdb/postgres refuse to run as root
            return ["runuser", "-u", "postgres", "--", *exe]
        return exe

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> "Postgres":
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
        pwfile.chmod(0o600)
        subprocess.run(
            self._cmd("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                      "--locale=C"),
            check=True, capture_output=True, text=True, timeout=120,
        )
        pwfile.unlink()
        self.pg_ctl_start()
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database],
            check=True, capture_output=True, text=True, timeout=60, env=env,
        )
        return self

    def pg_ctl_start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200 -c fsync=off"
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                                 "-t", "60", "start"), check=True, capture_output=True, text=True, timeout=90)

    def stop(self, mode: str = "fast") -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"),
                       capture_output=True, text=True, timeout=90)

    def postmaster_pid(self) -> Optional[int]:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


# --------------------------------------------------------------------------- MLflow server


@dataclass
class TrackingServer:
    """`vaelab server` (which execs `mlflow server`) on 127.0.0.1:port; restartable on the
    same port. The backend store URI reaches it through the environment only."""

    backend_store_uri: str
    artifacts: Path
    log: Path
    port: int = 0
    workers: int = 1
    proc: Optional[subprocess.Popen] = None
    starts: int = 0
    extra_env: dict = field(default_factory=dict)  # e.g. the S3 endpoint and keys of s3:// artifacts

    def __post_init__(self) -> None:
        self.port = self.port or free_port()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [*vaelab_command(), "server", "--artifacts-destination", str(self.artifacts),
                "--port", str(self.port), "--workers", str(self.workers)]

    def start(self, timeout: float = 120.0) -> "TrackingServer":
        self.starts += 1
        env = tool_env(MLFLOW_BACKEND_STORE_URI=self.backend_store_uri, **self.extra_env)
        handle = open(self.log, "a")
        handle.write(f"\n=== start {self.starts} ===\n")
        handle.flush()
        self.proc = subprocess.Popen(self.argv(), env=env, stdout=handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        handle.close()
        wait_until(self._healthy, timeout, what=f"MLflow server on port {self.port} (log {self.log})")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"MLflow server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole server (uvicorn and its workers): in-flight requests are lost."""
        stop_group(self.proc, signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGTERM, timeout=15)
        self.proc = None

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []


# --------------------------------------------------------------------------- Ray cluster


@dataclass
class RayCluster:
    """A multi-node Ray cluster on 127.0.0.1 (tests/ray_cluster_controller.py, a process
    of its own): a head with the dashboard and job server (`ray job submit`) and the Ray
    Client server, plus worker nodes added and removed on demand.

    Token authentication is on (Ray's default for a new cluster) with a token of this
    cluster's own; `env()` is what a driver or `ray job submit` needs to reach it.
    """

    root: Path
    head_cpus: int = 0
    auth_mode: str = "token"
    proc: Optional[subprocess.Popen] = None
    info: dict = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)
    extra_env: dict = field(default_factory=dict)  # every node's environment, e.g. S3 endpoint and keys

    def __post_init__(self) -> None:
        self.dashboard_port, self.client_port = free_ports(2)
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.log = self.root / "controller.log"

    @property
    def address(self) -> str:
        return self.info["address"]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def head_node_id(self) -> str:
        return self.info["head_node_id"]

    def env(self, **extra: str) -> dict[str, str]:
        # The Ray Client server gives a new client's server process 30 s to start: tight on
        # two busy cores.
        return tool_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE=self.auth_mode,
                        RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S="60",
                        **{**self.extra_env, **extra})

    def start(self, timeout: float = 240) -> "RayCluster":
        script = Path(__file__).with_name("ray_cluster_controller.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.root), str(self.head_cpus), str(self.dashboard_port),
             str(self.client_port)],
            env=self.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "w"),
            text=True, start_new_session=True, cwd=self.root,
        )
        self.info = self._read(timeout)
        return self

    def _read(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Ray cluster controller exited: {self.log.read_text()[-3000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                if line.strip():
                    data = json.loads(line)
                    if "error" in data:
                        raise RuntimeError(f"Ray cluster controller: {data['error']}\n{data.get('traceback', '')}")
                    return data
        raise TimeoutError(f"Ray cluster controller did not answer in {timeout:.0f} s: {self.log.read_text()[-3000:]}")

    def _call(self, timeout: float = 180, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def add_worker(self, num_cpus: int = 2) -> str:
        node_id = self._call(cmd="add_node", num_cpus=num_cpus)["node_id"]
        self.workers.append(node_id)
        return node_id

    def kill_worker(self, node_id: str) -> None:
        """The node disappears at once, as when a machine is lost (SIGKILL to its raylet and
        everything on it)."""
        self._call(cmd="remove_node", node_id=node_id, graceful=False)
        self.workers.remove(node_id)

    def alive_node_ids(self) -> list[str]:
        return self._call(cmd="nodes")["alive"]

    def pids(self) -> list[int]:
        return group_members(self.proc.pid) if self.proc else []

    def shutdown(self) -> None:
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            try:
                self._call(timeout=60, cmd="shutdown")
            except Exception:  # noqa: BLE001 - the process group is killed below anyway
                pass
        stop_group(self.proc, signal.SIGTERM, timeout=10)
        # Ray worker processes run in sessions of their own: kill what is left of the tree.
        kill_pids([pid for pid in tree if _stat(pid) is not None])
        kill_pids(processes_mentioning(str(self.root)))
        self.proc = None

    def dashboard_get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.dashboard_url}{path}",
                                         headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read().decode())


# --------------------------------------------------------------------------- S3 (moto)


def moto_missing_reason() -> Optional[str]:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        return "moto[server] and boto3 are not installed (pip install -e '.[dev]')"
    return None


@dataclass
class S3Server:
    """An S3-compatible server on 127.0.0.1: moto's (`moto_server`, a process of its own)
    behind a TCP relay of its own process (tests/tcp_relay.py). Clients reach the relay's
    port. moto keeps objects in its memory only, so `restart` restarts the relay: every
    connection is cut and new ones are refused while it is down, and the objects are still
    there when it comes back, as with a real S3 server that restarts.

    Access keys of its own (`key_id`, `secret`): any are accepted until `require_auth`."""

    root: Path
    key_id: str = "vaelab-test-key-id"
    secret: str = field(default_factory=lambda: "s3-secret-" + secrets.token_hex(8))
    region: str = "us-east-1"
    port: int = 0
    moto_port: int = 0
    proc: Optional[subprocess.Popen] = None
    relay: Optional[subprocess.Popen] = None

    def __post_init__(self) -> None:
        self.port, self.moto_port = (self.port, self.moto_port) if self.port else free_ports(2)
        self.log = self.root / "moto.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """What pyarrow (Ray Tune's storage), boto3 and MLflow need to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": self.region, "AWS_EC2_METADATA_DISABLED": "true", **extra}

    def start(self, timeout: float = 60) -> "S3Server":
        handle = open(self.log, "a")
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)],
                                     env=tool_env(), stdout=handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        handle.close()
        wait_until(lambda: self._answers(self.moto_port), timeout, what=f"moto on port {self.moto_port} ({self.log})")
        self.start_relay(timeout)
        return self

    def start_relay(self, timeout: float = 30) -> None:
        script = Path(__file__).with_name("tcp_relay.py")
        self.relay = subprocess.Popen([sys.executable, str(script), str(self.port), str(self.moto_port)],
                                      env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        wait_until(lambda: self._answers(self.port), timeout, what=f"the S3 relay on port {self.port}")

    def _answers(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as err:
            return err.code < 500
        except OSError:
            return False

    def restart(self, down_s: float = 5.0) -> None:
        """The endpoint goes away (connections cut, new ones refused) and comes back."""
        stop_group(self.relay, signal.SIGKILL)
        time.sleep(down_s)
        self.start_relay()

    def client(self, service: str = "s3", key_id: Optional[str] = None, secret: Optional[str] = None):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def require_auth(self) -> None:
        """From now on only a key moto knows is accepted: an IAM user allowed everything,
        whose new access key becomes `key_id` / `secret`."""
        iam = self.client("iam")
        iam.create_user(UserName="vaelab")
        iam.put_user_policy(UserName="vaelab", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="vaelab")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})  # not a form: moto reads the body
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        stop_group(self.relay, signal.SIGKILL)
        stop_group(self.proc, signal.SIGTERM, timeout=10)
        self.relay = self.proc = None
