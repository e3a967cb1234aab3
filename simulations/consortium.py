"""A local consortium for rehearsal and tests: the deployment's trust boundaries, as real
processes on loopback.

    fedneurogen consortium up DIR --sites 2     # or deploy/scripts/local-consortium.sh
    fedneurogen consortium down DIR
    fedneurogen consortium proxy-config --out nginx.conf ...   # a real coordinator's proxy

``up`` starts, each in its own session so that they outlive the command:

- a consortium CA and the SuperLink's TLS certificate (``DIR/certs``);
- ``flower-superlink`` with TLS and SuperNode authentication, listening on loopback only: its one
  HTTP port serves the sites' Fleet API (``/v1/fleet``), the Control API (``/v1/control``: submit,
  list and stop runs, register nodes) and the Runtime API (``/v1/runtime``) alike, so it is never
  exposed itself;
- nginx in front of it with two TLS listeners (``DIR/proxy/nginx.conf``, the routes of
  ``fedneurogen.shared.deploy.proxy``): the **site address**
  forwards ``/v1/fleet`` only, the **admin address** ``/v1/control`` only; everything else is
  answered 403. In a real deployment the admin listener binds to the coordinator's admin network;
  here both are on 127.0.0.1 on different ports;
- one authenticated ``flower-supernode`` per site (keys in ``DIR/keys``, registered through the
  admin address), connected to the site address, with its node config: data, state folder and
  the site's privacy policy (``--site-config``; by default DP required, as the shipped site
  files: a run without DP is refused and no statistics leave exactly. For a non-DP run on
  simulated data, relax it with ``--site-config 'allow-exact-statistics="true"'``), and the
  site's gate on apps
  (``fedneurogen.client.site_exec``): only apps whose hash is in ``--allowed-apps`` (default:
  this FedNeuroGen release, ``DIR/allowed-apps.txt``) are launched;

and writes ``DIR/endpoints.env`` (``SITE_ADDRESS``, ``ADMIN_ADDRESS``, ``CA_CERT``, ``FLWR_HOME``
and ``FLWR_CONNECTION`` for ``flwr`` on the admin side) and ``DIR/processes.json``, from which
``down`` stops exactly the processes ``up`` started.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedneurogen.shared.deploy.apps import app_hash, read_allowlist
from fedneurogen.shared.deploy.pki import make_ca, make_node_keypair, make_server_certificate
from fedneurogen.shared.deploy.proxy import nginx_config
from fedneurogen.shared.deploy.tls import TlsFiles
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import write_json_atomic, write_text_atomic
from fedneurogen.shared.outputs import check_outside_inputs
from fedneurogen.simulations.federated import (
    FederationError,
    LocalSuperLink,
    alive,
    app_dir,
    ensure_sites,
    free_port,
    register_supernode,
    start_supernode,
    stop_process,
    tail,
    write_connection,
)

CONNECTION = "consortium"
PROCESSES = "processes.json"
ENDPOINTS = "endpoints.env"


@dataclass(frozen=True)
class Endpoints:
    site_address: str  # what SuperNodes connect to: the Fleet API only
    admin_address: str  # what the coordinator's admins use with flwr: the Control API only
    ca_cert: Path
    flwr_home: Path  # a Flower home whose connection CONNECTION points at the admin address
    connection: str = CONNECTION

    def env_file(self) -> str:
        return "".join(
            f"{key}={value}\n"
            for key, value in (
                ("SITE_ADDRESS", self.site_address), ("ADMIN_ADDRESS", self.admin_address), ("CA_CERT", self.ca_cert),
                ("FLWR_HOME", self.flwr_home), ("FLWR_CONNECTION", self.connection),
            )
        )  # fmt: skip


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"{what} exited with code {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FederationError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s:\n{tail(log)}")


def start_proxy(folder: Path, tls: TlsFiles, upstream: str) -> tuple[subprocess.Popen, int, int]:
    """nginx in the foreground, in its own session; returns it and the site and admin ports."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )
    if nginx is None:
        raise ConfigError("the local consortium needs nginx (Debian/Ubuntu: apt-get install nginx-light)")
    folder.mkdir(parents=True, exist_ok=True)
    site_port, admin_port = free_port(), free_port()
    config = folder / "nginx.conf"
    write_text_atomic(config, nginx_config(folder, tls, upstream, f"127.0.0.1:{site_port}", f"127.0.0.1:{admin_port}"))
    log = folder / "nginx.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [nginx, "-p", str(folder), "-c", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    for port in (site_port, admin_port):
        _wait_listening(port, proc, log, "nginx")
    return proc, site_port, admin_port


def install_shim(folder: Path, allowlist: Path) -> Path:
    """A ``flower-superexec`` in ``folder`` that runs the site's gate on apps
    (``fedneurogen.client.site_exec``, started as a program, not imported) with ``allowlist``:
    put ``folder`` first on a SuperNode's PATH (``--isolation subprocess`` starts
    ``flower-superexec`` by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flower-superexec"
    shim.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m fedneurogen.client.site_exec --allowed-apps "{allowlist}" "$@"\n',
        encoding="utf-8",
    )
    shim.chmod(0o755)
    return shim


def up(
    folder: Path,
    *,
    sites: int = 2,
    data_root: Path | None = None,
    modality: str = "fmri",
    subjects_per_site: int = 3,
    site_config: str = 'dp-required="true" dp-max-epsilon="10" dp-max-delta="1e-5"',  # DP required, as shipped
    seed: int = 0,
    allowed_apps: Path | None = None,
    simulate: bool = False,
) -> Endpoints:
    """Start the consortium in ``folder`` (see the module's docstring); returns its endpoints.
    The sites of ``data_root`` are used read-only as they are (``ensure_sites``: simulated only
    into an absent or empty data root, or with ``simulate``); ``folder`` lies outside them."""
    folder = Path(folder).resolve()
    if (folder / PROCESSES).is_file() and any(alive(p["pid"]) for p in json.loads((folder / PROCESSES).read_text())):
        raise ConfigError(f"a consortium is already up in {folder}; stop it first with `down {folder}`")
    if sites < 1:
        raise ConfigError(f"--sites must be at least 1, got {sites}")
    root = Path(data_root or folder / "data").resolve()
    if data_root is not None:  # checked before the consortium writes its first file
        check_outside_inputs(
            folder, [site for site in root.glob("site-*") if site.is_dir()], what="the consortium folder"
        )
    data = ensure_sites(root, sites, modality, subjects_per_site, seed, simulate=simulate)
    certs, keys, logs = folder / "certs", folder / "keys", folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (certs / "ca.crt").is_file():
        make_ca(certs)
        make_server_certificate(certs, certs, ["127.0.0.1", "localhost"])
    tls = TlsFiles.in_folder(certs)
    if allowed_apps is None:  # the sites approve this release of FedNeuroGen, nothing else
        allowed_apps = folder / "allowed-apps.txt"
        write_text_atomic(allowed_apps, f"{app_hash(app_dir())}  # FedNeuroGen, {app_dir()}\n")
    read_allowlist(allowed_apps)  # a clear error now rather than a silent refusal of every run

    started: list[dict] = []

    def remember(name: str, proc: subprocess.Popen) -> None:
        started.append({"name": name, "pid": proc.pid})
        write_json_atomic(folder / PROCESSES, started)  # written as it grows: a failed `up` can still be taken `down`

    try:
        link = LocalSuperLink(
            folder / "superlink", simulation=False, log_file=logs / "superlink.log", tls=tls, node_auth=True
        )
        link.start()
        remember("superlink", link.proc)
        proxy, site_port, admin_port = start_proxy(folder / "proxy", tls, link.address)
        remember("proxy", proxy)
        endpoints = Endpoints(f"127.0.0.1:{site_port}", f"127.0.0.1:{admin_port}", tls.ca_certificate, folder / "admin")
        write_connection(endpoints.flwr_home, CONNECTION, endpoints.admin_address, root_certificates=tls.ca_certificate)
        for i, site in enumerate(data, start=1):
            name = f"site-{i:02d}"
            if not (keys / f"{name}.pub").is_file():
                make_node_keypair(keys, name)
            register_supernode(endpoints.flwr_home, CONNECTION, keys / f"{name}.pub", name=name)
            config = f'data-path="{site}" state-dir="{folder / "state" / name}" {site_config}'.strip()
            gate = install_shim(folder / "nodes" / name / "bin", Path(allowed_apps).resolve())
            node = start_supernode(
                folder / "nodes" / name, endpoints.site_address, config, logs / f"{name}.log",
                root_certificates=tls.ca_certificate, auth_key=keys / name, path_prefix=gate.parent,
            )  # fmt: skip
            remember(name, node)
    except BaseException:
        down(folder)
        raise
    write_text_atomic(folder / ENDPOINTS, endpoints.env_file())
    return endpoints


def down(folder: Path) -> list[str]:
    """Stop every process ``up`` started in ``folder`` (and their children); returns their names."""
    folder = Path(folder).resolve()
    record = folder / PROCESSES
    if not record.is_file():
        return []
    stopped = []
    for entry in reversed(json.loads(record.read_text())):  # sites first, the SuperLink last
        if alive(entry["pid"]):
            stop_process(_Handle(entry["pid"]))
            stopped.append(entry["name"])
    record.unlink()
    return stopped


class _Handle:
    """What ``stop_process`` needs of a ``Popen`` for a process started by an earlier command."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        return None if alive(self.pid) else 0

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.time() + (timeout if timeout is not None else 1e9)
        while alive(self.pid):
            if time.time() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.1)
        return 0
