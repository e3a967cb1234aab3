"""Local multi-site simulation: simulated sites, a Flower SuperLink on this machine, `flwr run`.

``run_federated(run_dir, data_root, ...)`` uses the sites of ``data_root`` as they are (it
simulates them only into an absent or empty data root, or with ``simulate``), starts a
``flower-superlink --simulation`` on free local ports (its own process group, stopped at the
end), points a private ``$FLWR_HOME`` at it, and runs the simulation's copy of this package's
Flower app (``simulation_app``: the site's ClientApp with the simulation's mod and keys) with
``flwr run`` for the requested rounds; each simulated SuperNode ``i`` trains on
``data_root/site-0{i+1}``. It returns the run folder (checkpoint, history.json, metrics.png).

The same pieces (``LocalSuperLink``, ``flwr_run``) drive a real deployment test: a SuperLink in
deployment mode with ``flower-supernode`` processes for the sites.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from fedneurogen.shared.deploy.tls import TlsFiles
from fedneurogen.shared.errors import ConfigError, FedNeuroGenError
from fedneurogen.shared.config import setting_value
from fedneurogen.shared.outputs import check_outside_inputs
from fedneurogen.shared.run_config import validate_run_config
from fedneurogen.simulations.ownership import made_by_simulator


class FederationError(FedNeuroGenError):
    """The federated run did not complete; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_dir() -> Path:
    """The folder holding this Flower app's pyproject.toml (the repository root)."""
    for folder in Path(__file__).resolve().parents:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.flwr.app]" in pyproject.read_text(encoding="utf-8"):
            return folder
    raise ConfigError(
        "cannot find the Flower app (a pyproject.toml with [tool.flwr.app]) above " + str(Path(__file__).parent)
    )


SIMULATION_CLIENTAPP = "fedneurogen.simulation_app:app"


def simulation_app(folder: Path) -> Path:
    """Write the Flower app the local simulation runs into ``folder`` and return it: this
    package's ``pyproject.toml`` with the simulation's ClientApp (``fedneurogen/simulation_app.py``)
    and the simulation's own run-config keys declared beside the site's (``SimulationConfig``).
    The app's code is the installed package either way; only this configuration differs."""
    from fedneurogen.simulations.drills import SimulationConfig

    config = tomllib.loads((app_dir() / "pyproject.toml").read_text(encoding="utf-8"))
    flower_app = config["tool"]["flwr"]["app"]
    flower_app["components"]["clientapp"] = SIMULATION_CLIENTAPP
    flower_app["config"].update(SimulationConfig.defaults())
    flower_app.pop("fab-include", None)  # the README stays with the site's app
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    return folder


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: a private FLWR_HOME and this interpreter's bin first."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # the app's dependencies are installed
    env.setdefault("RAY_DEDUP_LOGS", "0")
    return env


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), whatever session or group it moved to."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def kill_tree(root: int) -> tuple[set[int], set[int]]:
    """SIGKILL ``root``, its process group, every process below it and every group one of them
    leads: the SuperLink starts ``flower-superexec`` in a session of its own, whose
    ``flwr-simulation`` runs the ServerApp and Ray, so killing the SuperLink's group alone
    leaves the ServerApp running. The tree is stopped (SIGSTOP) first so that nothing forks or
    is orphaned while it is collected. Returns the processes and the groups killed."""

    def signal_all(sig: int, pids: set[int], groups: set[int]) -> None:
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    tree: set[int] = set()
    while True:  # until no new process appears
        found = descendants(root) | tree
        groups = {root} | {g for g in map(group_of, found) if g in found}
        signal_all(signal.SIGSTOP, {root} | found, groups)
        if found == tree:
            break
        tree = found
    signal_all(signal.SIGKILL, {root} | tree, groups)
    return tree, groups


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started: first
    politely (SIGTERM to its group), then SIGKILL to whatever of its tree is left, including
    processes in sessions of their own (the SuperLink's SuperExec, the ServerApp, Ray)."""
    tree = descendants(proc.pid)  # now: once the parent is gone its orphans cannot be traced to it
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if proc.poll() is None:
        tree |= kill_tree(proc.pid)[0]
    # only what still runs: a pid that has exited may already belong to an unrelated process
    for pid in {p for p in tree if alive(p)} | {proc.pid}:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.wait()


class LocalSuperLink:
    """A ``flower-superlink`` on 127.0.0.1 (simulation or deployment mode) owned by this process;
    with ``tls`` it serves HTTPS, with ``node_auth`` it admits only registered SuperNodes."""

    def __init__(
        self,
        flwr_home: Path,
        simulation: bool = True,
        log_file: Path | None = None,
        *,
        tls: TlsFiles | None = None,
        node_auth: bool = False,
        ray_address: str | None = None,
    ):
        self.flwr_home = Path(flwr_home)
        self.ray_address = ray_address  # the simulation engine joins this Ray cluster (else starts its own)
        self.simulation = simulation
        self.tls, self.node_auth = tls, node_auth
        self.port = free_port()
        self.log_file = log_file or self.flwr_home / "superlink.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "LocalSuperLink":
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        cmd = ["flower-superlink", *(self.tls.flags() if self.tls else ["--insecure"])]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.simulation:
            cmd.append("--simulation")
        if self.node_auth:
            cmd.append("--enable-supernode-auth")
        log = open(self.log_file, "ab")
        env = flower_env(self.flwr_home)
        env.pop("RAY_ADDRESS", None)  # only the cluster this run names
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address  # ray.init() in the simulation engine connects to it
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise FederationError(
                    f"flower-superlink exited with code {self.proc.returncode}:\n{tail(self.log_file)}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise FederationError(
            f"flower-superlink did not listen on {self.address} within {timeout:.0f} s:\n{tail(self.log_file)}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> "LocalSuperLink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_unwinds():
    """Inside, SIGTERM raises ``SystemExit(143)``, so ``finally`` blocks and context managers stop
    the Flower processes this process started (Python's default SIGTERM ends it without unwinding,
    leaving them running). A no-op outside the main thread, where no handler can be set.

    Yields
    ------
    None
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_connection(flwr_home: Path, name: str, address: str, root_certificates: Path | None = None) -> None:
    """A SuperLink connection in ``$FLWR_HOME/config.toml`` (Flower 1.42 keeps them there):
    TLS checked against ``root_certificates`` (the consortium's ca.crt), else plain text."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f"root-certificates = {json.dumps(str(root_certificates))}" if root_certificates else "insecure = true"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{security}\n', encoding="utf-8"
    )


def start_supernode(
    flwr_home: Path,
    superlink: str,
    node_config: str,
    log_file: Path,
    *,
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
    max_retries: int | None = None,
    threads: int = 1,
    path_prefix: Path | None = None,
) -> subprocess.Popen:
    """A ``flower-supernode`` site daemon in its own session (stop it with ``stop_process``).
    ``root_certificates``: the CA that must have signed the SuperLink's certificate (else
    plain text); ``auth_key``: the site's private authentication key; ``max_retries``: give up
    after that many failed connection attempts instead of retrying forever; ``path_prefix``: a
    folder searched first for the programs it starts (the site's ``flower-superexec`` gate)."""
    env = flower_env(flwr_home)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = str(threads)  # sites sharing one machine share its cores
    cmd = ["flower-supernode", "--superlink", superlink, "--port", str(free_port()), "--node-config", node_config]
    cmd += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    if auth_key:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    Path(flwr_home).mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def register_supernode(flwr_home: Path, connection: str, public_key: Path, name: str | None = None) -> int:
    """``flwr supernode register``: admit the site holding ``public_key``; returns its node id."""
    cmd = ["flwr", "supernode", "register", str(public_key), connection, "--format", "json"]
    if name:
        cmd += ["--name", name]
    out = subprocess.run(cmd, env=flower_env(flwr_home), capture_output=True, text=True, timeout=120)
    try:
        reply = json.loads(out.stdout)
        return int(reply["node-id"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise FederationError(
            f"flwr supernode register {public_key} failed (exit {out.returncode}):\n{out.stdout}{out.stderr}"
        ) from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def app_run_config(app: Path | None = None) -> dict[str, Any]:
    """The app's default run config (``[tool.flwr.app.config]`` of its pyproject.toml)."""
    pyproject = Path(app or app_dir()) / "pyproject.toml"
    return dict(tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"])


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def flwr_run(
    flwr_home: Path,
    connection: str,
    run_config: dict[str, Any],
    *,
    federation_config: dict[str, Any] | None = None,
    app: Path | None = None,
    timeout: float = 3600.0,
    log_file: Path | None = None,
    on_poll: Callable[[], None] | None = None,
) -> int:
    """``flwr run APP CONNECTION`` with overrides, streaming the run's log to ``log_file``;
    returns the run id once the run has finished, or raises ``FederationError``. ``on_poll`` is
    called about every second while the run goes on (to show its progress)."""
    env = flower_env(flwr_home)
    cmd = ["flwr", "run", str(app or app_dir()), connection, "--stream"]
    if run_config:
        cmd += ["--run-config", " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())]
    if federation_config:
        cmd += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
    log_file = Path(log_file or flwr_home / "run.log")
    for attempt in range(3):
        with open(log_file, "ab") as log:
            start = log.tell()
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.time() + timeout
            try:
                while proc.poll() is None:
                    if time.time() > deadline:
                        raise FederationError(f"flwr run did not finish within {timeout:.0f} s:\n{tail(log_file)}")
                    if on_poll is not None:
                        on_poll()
                    time.sleep(1.0)
            except BaseException:  # a timeout, Ctrl-C or SIGTERM (sigterm_unwinds): the run goes with us
                stop_process(proc)
                raise
        with open(log_file, "rb") as log:
            log.seek(start)
            text = log.read().decode("utf-8", errors="replace")
        # A SuperLink that has just opened its port can still refuse the first call: try again.
        if proc.returncode == 0 or "Successfully started run" in text or "SuperLink is unavailable" not in text:
            break
        time.sleep(2.0 * (attempt + 1))
    match = re.findall(r"Successfully started run (\d+)", text)
    if proc.returncode != 0 or not match:
        raise FederationError(f"flwr run failed (exit {proc.returncode}):\n{tail(log_file)}")
    run_id = int(match[-1])
    status = run_status(flwr_home, connection, run_id)
    if "completed" not in status:
        raise FederationError(f"run {run_id} ended as {status!r}:\n{tail(log_file)}")
    return run_id


def run_status(flwr_home: Path, connection: str, run_id: int, wait: float = 120.0) -> str:
    """The run's status text (``finished:completed``, ``finished:failed: details``, ...), waiting
    up to ``wait`` seconds for it to finish (the log stream can end a moment before)."""
    deadline = time.time() + wait
    while True:
        try:
            out = subprocess.run(
                ["flwr", "ls", connection, "--run-id", str(run_id), "--format", "json"],
                env=flower_env(flwr_home),
                capture_output=True,
                text=True,
                timeout=60,
            )
            run = json.loads(out.stdout)["runs"][0]
            status = f"{run.get('status', '')}" + (f": {run['status-details']}" if run.get("status-details") else "")
        except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, IndexError) as err:
            status = f"unknown ({type(err).__name__})"
        if status.startswith("finished") or time.time() > deadline:
            return status
        time.sleep(2.0)


def ensure_sites(
    data_root: Path,
    num_sites: int,
    modality: str,
    subjects_per_site: int,
    seed: int,
    run_seconds: float | None = None,
    simulate: bool = False,
) -> list[Path]:
    """The sites ``data_root/site-01`` ... ``site-NN``, used as they are; simulated only when
    there is nothing to overwrite.

    A site folder that exists (a folder or a symbolic link, real data or an earlier simulation) is
    never written. The simulator runs only when ``data_root`` is absent or empty, or, with
    ``simulate``, to complete a data root the simulator made itself (it refuses any other folder
    before writing, see ``simulations/ownership.py``).

    Parameters
    ----------
    data_root : Path
        Folder of the site folders.
    num_sites : int
        Sites the run needs.
    modality, subjects_per_site, seed, run_seconds
        The simulation's parameters, used only when sites are simulated (and then checked
        against a simulation that the data root already holds).
    simulate : bool
        Simulate the missing sites of a data root that exists (else a missing site is an error).

    Returns
    -------
    list of Path
        The site folders, in order.

    Raises
    ------
    ConfigError
        When a site is missing (without ``simulate``), when the data root holds a simulation made
        with other parameters, or when the simulator would write into a folder it did not make.
    """
    data_root = Path(data_root)
    sites = [data_root / f"site-{i + 1:02d}" for i in range(num_sites)]
    missing = [s.name for s in sites if not s.is_dir()]
    if not missing:
        return sites
    summary = data_root / "simulation.json"
    if made_by_simulator(data_root) and summary.is_file():  # completing it must not change it
        done = json.loads(summary.read_text(encoding="utf-8"))
        wanted = {"modality": modality, "subjects_per_site": subjects_per_site, "seed": seed}
        if any(done.get(k) != v for k, v in wanted.items()):
            found = {k: done.get(k) for k in wanted}
            raise ConfigError(f"{data_root} holds another simulation ({found}, not {wanted}); choose another data root")
    empty = not data_root.exists() or (data_root.is_dir() and not any(data_root.iterdir()))
    if not (empty or simulate):
        raise ConfigError(
            f"{data_root}: no site folder {', '.join(missing)} (found: {', '.join(sorted(_site_names(data_root))) or 'none'}); "
            "existing sites are used as they are and never simulated over: give --sites to match them, or --simulate "
            "to simulate the missing ones into a data root the simulator made"
        )
    from fedneurogen.simulations.simulator import simulate_dataset

    simulate_dataset(
        data_root,
        n_sites=num_sites,
        subjects_per_site=subjects_per_site,
        modality=modality,
        seed=seed,
        run_seconds=run_seconds,
        progress=False,
    )
    return sites


def _site_names(data_root: Path) -> list[str]:
    return [p.name for p in data_root.glob("site-*") if p.is_dir()] if data_root.is_dir() else []


class RoundWatcher:
    """Calls ``on_round`` once for every new entry of a run's ``history.json`` (written
    atomically by the server after each round; a resumed run's earlier rounds are skipped). A
    round whose model is scored in the next round's training replies (folded evaluation) has no
    ``evaluate`` yet: the next entry passed carries it as ``evaluated_before``."""

    def __init__(self, history: Path, on_round: Callable[[dict[str, Any]], None]):
        self.history, self.on_round = history, on_round
        self.seen = {entry["round"] for entry in self._read()}

    def _read(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.history.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []

    def __call__(self) -> None:
        history = self._read()
        for i, entry in enumerate(history):
            if entry.get("round") not in self.seen:
                self.seen.add(entry.get("round"))
                earlier = (history[i - 1].get("evaluate") or {}) if i else {}
                if not entry.get("evaluate") and earlier.get("folded"):  # scored in this round's replies
                    entry = {**entry, "evaluated_before": {"round": history[i - 1].get("round"), **earlier}}
                self.on_round(entry)


def run_federated(
    run_dir: str | Path,
    data_root: str | Path,
    *,
    num_sites: int = 3,
    rounds: int = 3,
    modality: str = "fmri",
    subjects_per_site: int = 4,
    run_seconds: float | None = None,
    seed: int = 0,
    run_config: dict[str, Any] | None = None,
    flwr_home: str | Path | None = None,
    timeout: float = 3600.0,
    client_cpus: int = 2,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    simulate: bool = False,
    before_start: Callable[[Any, list[Path]], None] | None = None,
    ray_address: str | None = None,
) -> Path:
    """Run a local federated simulation; returns ``run_dir`` (see the module docstring).

    ``run_config`` overrides any key of ``[tool.flwr.app.config]`` (e.g. ``strategy``,
    ``dp-enabled``, ``resume``) or of the simulation's own (``sim-node-config``, the drills:
    ``simulations/drills.py``). ``client_cpus`` is the CPUs each simulated site gets
    (Ray runs ``cpus // client_cpus`` sites at a time); ``ray_address`` (``HOST:PORT``) runs
    them on that Ray cluster's nodes instead of a Ray instance of the run's own
    (``simulations/ray_cluster.py``): every node must see the data root and this environment. ``on_round`` gets each round's
    ``history.json`` entry as soon as the server has written it. ``simulate`` completes a data
    root the simulator made with the missing sites (``ensure_sites``); existing sites are always
    used as they are. ``before_start`` gets the validated run config and the site folders before
    the federation starts (``fedneurogen federate`` prints the privacy plan there). The run folder
    and the sites' state folder must lie outside the sites."""
    run_dir, data_root = Path(run_dir).resolve(), Path(data_root).resolve()
    config = {
        "num-server-rounds": rounds,
        "run-dir": str(run_dir),
        "data-root": str(data_root),
        "num-sites": num_sites,
        "modality": modality,
        "subjects-per-site": subjects_per_site,
        "seed": seed,
        "min-available-nodes": num_sites,
        "site-state-dir": str(run_dir.parent / f"{run_dir.name}-site-state"),
        **(run_config or {}),
    }
    # Check the run config here, before anything starts, as the ServerApp will (its error would
    # otherwise come only after the simulation engine's start-up).
    from fedneurogen.simulations.drills import SimulationConfig

    run = validate_run_config({**app_run_config(), **config})
    SimulationConfig.from_run_config(config)
    sites = ensure_sites(data_root, num_sites, modality, subjects_per_site, seed, run_seconds, simulate=simulate)
    if before_start is not None:
        before_start(run, sites)
    for output in (run_dir, Path(config["site-state-dir"])):
        check_outside_inputs(output, sites, what="the run folder")
    federation = {
        "num-supernodes": num_sites,
        "client-resources-num-cpus": client_cpus,
        "client-resources-num-gpus": 0.0,
    }
    own_home = flwr_home is None
    home = Path(tempfile.mkdtemp(prefix="flwr-home-")) if own_home else Path(flwr_home)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        app = simulation_app(home / "simulation-app")
        link = LocalSuperLink(home, simulation=True, log_file=run_dir / "superlink.log", ray_address=ray_address)
        with sigterm_unwinds(), link:
            write_connection(home, "local-sim", link.address)
            watch = RoundWatcher(run_dir / "history.json", on_round) if on_round is not None else None
            flwr_run(
                home,
                "local-sim",
                config,
                federation_config=federation,
                app=app,
                timeout=timeout,
                log_file=run_dir / "flwr-run.log",
                on_poll=watch,
            )
            if watch is not None:
                watch()  # the last round, written just before the run ended
    finally:
        if own_home:
            shutil.rmtree(home, ignore_errors=True)
    return run_dir


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["strategy=fedprox", "dp-enabled=true"]`` -> run-config values (TOML, else bare text)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        overrides[key] = setting_value(value)
    return overrides
