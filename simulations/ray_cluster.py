"""A Ray cluster of several nodes on this machine: the rehearsal of a simulation across machines.

Flower's simulation engine runs the simulated sites as Ray actors. Without a cluster address it
starts a Ray instance of its own on this machine; with one (``fedneurogen federate
--ray-address HOST:PORT``, passed to the simulation engine as ``RAY_ADDRESS``) it joins that
cluster, and the sites run on every node of it. On real machines a consortium starts the cluster
itself (``ray start --head --port PORT`` on one, ``ray start --address HOST:PORT`` on the
others). ``LocalRayCluster`` does the same with several nodes on one machine (each node its own
raylet, object store and CPUs), as real processes started with ``ray start``, for the tests and
``benchmarks/scale.py``; it stops exactly the processes it started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedneurogen.simulations.federated import FederationError, free_port, stop_process, tail


class LocalRayCluster:
    """``nodes`` Ray nodes on 127.0.0.1, ``cpus_per_node`` CPUs each (started by ``start`` or
    ``with``); ``address`` is what ``run_federated(ray_address=...)`` takes.

    Parameters
    ----------
    nodes : int
        Nodes, the head included.
    cpus_per_node : int
        CPUs each node offers to the site actors.
    memory_per_node_mb : int
        Object store of each node (Ray's default would take a share of the machine's memory per node).
    """

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, memory_per_node_mb: int = 200):
        if nodes < 1 or cpus_per_node < 1:
            raise ValueError(f"a Ray cluster needs at least one node and one CPU each, got {nodes} x {cpus_per_node}")
        self.nodes, self.cpus_per_node, self.memory_per_node_mb = nodes, cpus_per_node, memory_per_node_mb
        self.port = free_port()
        # short: Ray's socket paths must fit in 107 characters
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ray_start(self, name: str, *flags: str) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        cmd = [ray, "start", *flags, "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus_per_node)]
        cmd += ["--object-store-memory", str(self.memory_per_node_mb * 2**20), "--disable-usage-stats", "--block"]
        log = open(self.temp_dir / f"{name}.log", "ab")
        env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
        env.pop("RAY_ADDRESS", None)  # a node joins the address its flags name
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        log.close()

    def start(self, timeout: float = 120.0) -> "LocalRayCluster":
        """Start the head, then the other nodes, and wait until all of them have joined.

        Raises
        ------
        FederationError
            A node exited or the cluster did not form within ``timeout`` seconds (its logs in the message).
        """
        head = ["--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir", str(self.temp_dir)]
        self._ray_start("head", *head)
        for i in range(1, self.nodes):
            self._ray_start(f"node-{i}", "--address", self.address)
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    name = "head" if i == 0 else f"node-{i}"
                    self.stop()
                    raise FederationError(
                        f"ray start ({name}) exited with code {proc.returncode}:\n{tail(self.temp_dir / f'{name}.log')}"
                    )
            if self.alive_nodes() == self.nodes:
                return self
            time.sleep(1.0)
        self.stop()
        raise FederationError(f"the local Ray cluster did not form {self.nodes} nodes within {timeout:.0f} s")

    def alive_nodes(self) -> int:
        """How many of the cluster's nodes are alive (0 while the head is not up)."""
        probe = (
            "import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False);"
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % self.address
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=self._probe_env()
            )
        except subprocess.TimeoutExpired:
            return 0
        lines = done.stdout.strip().splitlines()
        return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else 0

    @staticmethod
    def _probe_env() -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        return env

    def stop(self) -> None:
        """Stop the nodes, the head last, with every process each started (process groups)."""
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
