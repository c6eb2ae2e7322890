"""A Flower deployment on one machine: a SuperLink and N SuperNodes as local processes, over TLS with
node authentication (or insecure), on free loopback ports. What tests/test_flower_deploy.py runs, and
what ``python -m fedrec.flower.local`` runs for a user trying the deployment path before real devices.

Every process is started in its own session and torn down by walking its process tree (SuperLink and
SuperNode start ``flower-superexec`` in sessions of their own, which start the ServerApp and ClientApp
processes): ``LocalFederation`` is a context manager, and its ``close`` kills whatever is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "flower"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: this checkout importable, no telemetry, no update
    check, and no per-run environment built by Flower (fedrec is already installed here)."""
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )  # fmt: skip
    return env


def make_certificates(out: Path) -> Path:
    """``flower/certs.sh``: a CA and a certificate for localhost / 127.0.0.1."""
    subprocess.run(["bash", str(APP / "certs.sh"), str(out)], check=True, capture_output=True)
    return out


def make_node_key(path: Path) -> Path:
    """An ECDSA P-384 key pair (what Flower's node authentication takes): ``path`` and ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(path)], check=True)
    return path


def kill_tree(proc: subprocess.Popen | psutil.Process) -> None:
    """Kill a process and every descendant (collected first: killing the parent would orphan them)."""
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
    if isinstance(proc, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


@dataclass
class LocalFederation:
    """A SuperLink on a free loopback port, with TLS and node authentication unless ``insecure``."""

    root: Path
    insecure: bool = False
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.env = flower_env(self.home)
        self.certs = None if self.insecure else make_certificates(self.root / "certs")
        self.address = f"127.0.0.1:{self.port}"
        conn = f'address = "{self.address}"\n'
        conn += "insecure = true\n" if self.insecure else f'root-certificates = "{self.certs / "ca.crt"}"\n'
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local-deploy"\n\n[superlink.local-deploy]\n{conn}'
        )

    # -- processes ---------------------------------------------------------------------------------

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def start_superlink(self) -> None:
        cmd = ["flower-superlink", "--port", str(self.port), "--database", str(self.root / "state.db")]
        if self.insecure:
            cmd.append("--insecure")
        else:
            c = self.certs
            cmd += ["--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.pem"),
                    "--ssl-keyfile", str(c / "server.key"), "--enable-supernode-auth"]  # fmt: skip
        self._start("superlink", cmd)
        self.wait_for_superlink()

    def wait_for_superlink(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited:\n{self.log('superlink')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"flower-superlink not listening on {self.address}:\n{self.log('superlink')}")

    def register(self, key: Path) -> int:
        """``flwr supernode register KEY.pub``: the SuperLink admits a node holding this key."""
        out = self.flwr("supernode", "register", f"{key}.pub", "local-deploy")
        return int(out["node-id"])

    def start_supernode(
        self, name: str, partition: int, partitions: int, key: Path | None = None
    ) -> subprocess.Popen:
        cmd = ["flower-supernode", "--superlink", self.address, "--port", str(free_port()),
               "--node-config", f"partition-id={partition} num-partitions={partitions}"]  # fmt: skip
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.certs / "ca.crt")]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        return self._start(name, cmd)

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """A ``flwr`` CLI call with ``--format json``; its JSON answer."""
        res = subprocess.run(
            ["flwr", *args, "--format", "json"], env=self.env, capture_output=True, text=True, timeout=timeout,
            cwd=self.root,
        )  # fmt: skip
        try:
            return json.loads(res.stdout)
        except ValueError:
            raise RuntimeError(
                f"flwr {' '.join(args)}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
            ) from None

    def run_app(self, run_config: dict[str, Any]) -> int:
        """``flwr run flower/``: submit the app with these run-config overrides; the run id. (``flwr
        run`` exits 0 even when the run fails later: follow it with ``status``.)"""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        out = self.flwr("run", str(APP), "local-deploy", "--run-config", overrides)
        if not out.get("success"):
            raise RuntimeError(f"flwr run: {out}")
        return int(out["run-id"])

    def status(self, run_id: int) -> str:
        out = self.flwr("ls", "local-deploy", "--run-id", str(run_id))
        return str(out["runs"][0]["status"])

    def wait(self, run_id: int, timeout: float) -> str:
        """The run's final status (``finished:completed``, ``finished:failed``, ...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} still {self.status(run_id)} after {timeout} s")

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace")[-4000:] if path and path.exists() else ""

    def kill(self, name: str) -> None:
        kill_tree(self.procs.pop(name))

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MARKER = ".fedrec-flower-local"  # marks a --dir as this tool's: only then does it delete anything there


def _made_here(path: Path) -> bool:
    """What a previous ``main`` left in its ``--dir`` and the next one replaces: Flower's home and
    state database (with SQLite's side files), the certificates, node keys and process logs. Not
    ``runs/``: the run directories are results, and what ``flower.resume`` continues from."""
    name = path.name
    return (
        name in ("flwr-home", "certs", "state.db")
        or name.startswith("state.db-")
        or name.endswith(".log")
        or re.fullmatch(r"node\d+(\.pub)?", name) is not None
    )


def prepare_dir(root: Path) -> None:
    """Make ``root`` this tool's working folder: create and mark it, or clear what an earlier run of the
    tool left there. A folder that is not empty and not marked is refused (``ValueError``) and left as
    it is: ``--dir`` may name a checkout or a user's data."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"--dir {root}: not a directory")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise ValueError(f"--dir {root}: not empty and not made by this tool (no {MARKER}); name another one")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by python -m fedrec.flower.local, which clears it on its next run\n")
    for child in root.iterdir():
        if not _made_here(child):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def main() -> None:
    p = argparse.ArgumentParser(
        description="A fedrec run on a local Flower deployment (SuperLink + N SuperNodes)."
    )
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication")
    p.add_argument(
        "--dir", default="flower-local",
        help="certificates, keys, logs, Flower's state (replaced on each run) and runs/ (kept); "
        f"an existing folder must be empty or hold {MARKER}",
    )  # fmt: skip
    p.add_argument("--run-config", nargs="*", default=[], help="key=value overrides (fedrec keys, flower.*)")
    p.add_argument("--timeout", type=float, default=3600.0)
    args = p.parse_args()
    root = Path(args.dir).resolve()
    try:
        prepare_dir(root)
    except ValueError as err:
        sys.exit(f"fedrec.flower.local: {err}")
    overrides: dict[str, Any] = {"flower.min-nodes": args.nodes, "run.out_dir": str(root / "runs")}
    for kv in args.run_config:
        k, _, v = kv.partition("=")
        try:
            overrides[k] = json.loads(v)
        except ValueError:
            overrides[k] = v
    with LocalFederation(root, insecure=args.insecure) as fed:
        fed.start_superlink()
        for i in range(args.nodes):
            key = None if args.insecure else make_node_key(root / f"node{i}")
            if key is not None:
                fed.register(key)
            fed.start_supernode(f"node{i}", i, args.nodes, key)
        run_id = fed.run_app(overrides)
        print(f"run {run_id} on {fed.address}; logs in {root}", flush=True)
        status = fed.wait(run_id, args.timeout)
        print(f"run {run_id}: {status}; run directories in {root / 'runs'}")
        if status != "finished:completed":
            sys.exit(1)


if __name__ == "__main__":
    main()
