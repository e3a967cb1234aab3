"""Crash and resume: a server killed mid-run continues from its last checkpoint, and a kill at
any point of a checkpoint write leaves ``latest.json`` naming a complete round.

1. A real simulation SuperLink + ``flwr run`` for 4 rounds is SIGKILLed (SuperLink, its
   ServerApp and everything they started) once round 2 is recorded; a new SuperLink and
   ``flwr run`` with ``resume=true`` finish the run, which ends where an uninterrupted run ends.
2. ``RunStore.save_round`` runs in a child process that is killed at every file-system step of
   the write (and half-way through every file and folder it writes or deletes), and at random
   moments of back-to-back writes; after each kill the store must load and resume.

Run as a script (``python tests/test_crash_resume.py kill-steps DIR`` or ``random-kills DIR``)
this file is the child-process driver of part 2.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROUND_PARAM = "dit.blocks.0.attn.proj.bias"  # holds the round number in the part-2 checkpoints


# ---------------------------------------------------------------------------------------------
# Part 2's child process: save_round killed at every step


def _fill(model, rnd: int):
    import torch

    with torch.no_grad():
        dict(model.named_parameters())[ROUND_PARAM].fill_(float(rnd))
    history = [
        {"round": r, "train": {"aggregate": {"loss": 1.0 / r}}, "evaluate": {"aggregate": {"loss": 2.0 / r}}}
        for r in range(1, rnd + 1)
    ]
    state = {"backbone/m_t/w": np.full(3, rnd, dtype=np.float32)}
    return state, history


def _save(store, model, rnd: int):
    state, history = _fill(model, rnd)
    return store.save_round(rnd, model, state, history, {"class_names": ["a", "b"], "provenance": {"rounds": rnd}})


class Killer:
    """Counts the file-system steps of a save and SIGKILLs this process at step ``at``; a step
    that writes or deletes something is first done half-way (half a file's bytes, half a
    folder's files), as a kill in its middle would leave it."""

    def __init__(self, at: int):
        self.at, self.count, self.steps, self.depth = at, 0, [], 0

    def step(self, label: str, half=None) -> None:
        if self.depth:  # a step inside a step (rmtree's unlinks) is part of it
            return
        self.count += 1
        self.steps.append(label)
        if self.count == self.at:
            if half is not None:
                half()
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        import io

        import fedneurogen.server.checkpointing as checkpointing
        import fedneurogen.shared.model.checkpoint as model_checkpoint

        killer = self

        def around(module, name, half_of=None):
            real = getattr(module, name)

            def wrapper(*args, **kwargs):
                target = Path(str(args[-1] if name in ("replace", "rename", "symlink", "save_file") else args[0])).name
                killer.step(
                    f"before {name} {target}", None if half_of is None else (lambda: half_of(real, *args, **kwargs))
                )
                killer.depth += 1
                try:
                    result = real(*args, **kwargs)
                finally:
                    killer.depth -= 1
                killer.step(f"after {name} {target}")
                return result

            setattr(module, name, wrapper)

        def half_file(real, tensors, filename, *a, **k):  # safetensors: the file cut half-way
            real(tensors, filename, *a, **k)
            size = os.path.getsize(filename)
            os.truncate(filename, size // 2)

        def half_tree(real, path, *a, **k):  # a folder deleted half-way
            killer.depth += 1
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for p in files[: max(1, len(files) // 2)]:
                p.unlink()

        for fn in ("replace", "rename", "symlink", "unlink", "mkdir", "rmdir"):
            around(os, fn)
        around(shutil, "rmtree", half_tree)
        around(checkpointing, "save_file", half_file)
        around(model_checkpoint, "save_file", half_file)

        real_open = io.open

        class HalfWriter:
            def __init__(self, f, name):
                self._f, self._name = f, name

            def write(self, data):
                def half():
                    self._f.write(data[: len(data) // 2])
                    self._f.flush()

                killer.step(f"write {self._name}", half)
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                self._f.__enter__()
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

        def tracked_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return HalfWriter(f, Path(str(file)).name) if any(c in mode for c in "wax+") else f

        io.open = tracked_open


def kill_steps(root: Path) -> None:
    """A template store with rounds 1 and 2 (keep=2), then for every step k of saving round 3
    a copy of it in ``root/trial-k`` whose save is killed at step k (in a forked child)."""
    import torch

    torch.set_num_threads(1)  # no thread pools across fork
    from fedneurogen.server.checkpointing import RunStore
    from fedneurogen.shared.model import NeuroGenModel

    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    template = root / "template"
    for rnd in (1, 2):
        _save(RunStore(template, keep=2), model, rnd)

    def trial(folder: Path, at: int) -> tuple[int, list[str]]:
        shutil.copytree(template, folder, symlinks=True)
        steps_file = folder.parent / f"{folder.name}.steps.json"
        pid = os.fork()
        if pid == 0:  # the child: save round 3, killed at step `at` (at=0: never)
            killer = Killer(at)
            killer.install()
            try:
                _save(RunStore(folder, keep=2), model, 3)
            finally:
                Path(steps_file).write_text(json.dumps(killer.steps))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        steps = json.loads(steps_file.read_text()) if steps_file.is_file() else []
        return status, steps

    status, steps = trial(root / "trial-0", 0)  # counts the steps
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    killed = []
    for at in range(1, len(steps) + 1):
        status, _ = trial(root / f"trial-{at}", at)
        killed.append(
            {
                "trial": f"trial-{at}",
                "step": steps[at - 1],
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            }
        )
    (root / "trials.json").write_text(json.dumps({"steps": steps, "killed": killed}, indent=1))


def random_kills(root: Path, trials: int = 10) -> None:
    """For each trial a copy of a store with rounds 1 and 2 in ``root/trial-i``, and a forked
    child saving rounds 3, 4, 5, ... into it back to back, SIGKILLed after a random delay."""
    import torch

    torch.set_num_threads(1)
    from fedneurogen.server.checkpointing import RunStore
    from fedneurogen.shared.model import NeuroGenModel

    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    template = root / "template"
    for rnd in (1, 2):
        _save(RunStore(template, keep=2), model, rnd)
    rng = random.Random(0)
    report = []
    for trial in range(trials):
        folder = root / f"trial-{trial}"
        shutil.copytree(template, folder, symlinks=True)
        pid = os.fork()
        if pid == 0:
            store, rnd = RunStore(folder, keep=2), 2
            while True:
                rnd += 1
                _save(store, model, rnd)
        delay = rng.uniform(0.02, 1.2)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        report.append(
            {"trial": folder.name, "delay": delay, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}
        )
    (root / "trials.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    {"kill-steps": kill_steps, "random-kills": random_kills}[sys.argv[1]](Path(sys.argv[2]))
    sys.exit(0)


# ---------------------------------------------------------------------------------------------
# The tests

import pytest  # noqa: E402

from fedneurogen.server.checkpointing import RunStore  # noqa: E402
from fedneurogen.shared.model import NeuroGenModel, load_checkpoint  # noqa: E402
from fedneurogen.simulations.federated import (  # noqa: E402
    LocalSuperLink,
    _toml_value,
    alive,
    descendants,
    flower_env,
    kill_tree,
    run_federated,
    simulation_app,
    stop_process,
    write_connection,
)


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return env


def check_store(folder: Path, expect: set[int]) -> int:
    """The store's latest.json and `checkpoint` link name complete rounds among ``expect``;
    resume works and gives that round's weights, strategy state and history. Returns the round."""
    from safetensors.numpy import load_file

    latest = json.loads((folder / "latest.json").read_text())
    rnd = int(latest["round"])
    assert rnd in expect, f"{folder.name}: latest.json names round {rnd}, not one of {sorted(expect)}"
    named = folder / latest["checkpoint"]
    assert named.name == f"round-{rnd:04d}"
    linked = (folder / "checkpoint").resolve()
    assert linked.parent == (folder / "rounds").resolve() and int(linked.name.split("-")[1]) in (rnd - 1, rnd)
    for round_folder in {named, linked}:
        n = int(round_folder.name.split("-")[1])
        model, meta = load_checkpoint(round_folder, device="cpu")  # verifies the weights' SHA-256
        assert meta["provenance"]["rounds"] == n
        assert float(dict(model.named_parameters())[ROUND_PARAM][0].detach()) == n
        assert [e["round"] for e in json.loads((round_folder / "history.json").read_text())] == list(range(1, n + 1))
        assert np.array_equal(
            load_file(str(round_folder / "strategy.safetensors"))["backbone/m_t/w"], np.full(3, n, dtype=np.float32)
        )
    done, state, history, meta = RunStore(folder).resume(NeuroGenModel("tiny", device="cpu"))
    assert (
        done == rnd
        and [e["round"] for e in history] == list(range(1, rnd + 1))
        and float(state["backbone/m_t/w"][0]) == rnd
    )
    return rnd


@pytest.mark.timeout(600)
def test_a_kill_at_any_step_of_a_checkpoint_write_leaves_a_complete_round(tmp_path):
    started = time.time()
    out = subprocess.run(
        [sys.executable, __file__, "kill-steps", str(tmp_path)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    trials = json.loads((tmp_path / "trials.json").read_text())
    steps, killed = trials["steps"], trials["killed"]
    # every kind of step of a save was hit: the weights, the strategy state, the history, the
    # rename of the round folder, latest.json, the `checkpoint` link, the pruning of round 1
    text = "\n".join(steps)
    for expected in (
        "model.safetensors",
        "strategy.safetensors",
        "write .history.",
        "replace round-0003",
        "write .latest.",
        "replace latest.json",
        "symlink .checkpoint",
        "replace checkpoint",
        "rmtree round-0001",
    ):
        assert expected in text, f"no step {expected!r} in:\n{text}"
    assert len(killed) >= 25 and all(k["signal"] == signal.SIGKILL for k in killed)
    assert check_store(tmp_path / "trial-0", {3}) == 3  # not killed
    seen = []  # the round latest.json names after a kill at each step
    model = NeuroGenModel("tiny", device="cpu")
    for k in killed:
        folder = tmp_path / k["trial"]
        seen.append(check_store(folder, {2, 3}))
        # and the store takes the next rounds: a resumed server saves round 3 (again) and 4
        store = RunStore(folder, keep=2)
        for rnd in range(seen[-1] + 1, 5):
            _save(store, model, rnd)
        assert (
            store.latest() == {"round": 4, "checkpoint": "rounds/round-0004"}
            and load_checkpoint(folder / "checkpoint", device="cpu")[1]["provenance"]["rounds"] == 4
        )
        assert sorted(p.name for p in (folder / "rounds").iterdir()) == [
            "round-0003",
            "round-0004",
        ]  # nothing half-written kept
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # nor temporary files
    # until the rename of latest.json the old round is named, from then on the new one
    switch = steps.index("after replace latest.json")
    assert seen == [2] * switch + [3] * (len(steps) - switch), list(zip(steps, seen))
    print(f"{len(killed)} kill points checked in {time.time() - started:.0f} s")


@pytest.mark.timeout(300)
def test_random_sigkills_during_back_to_back_saves(tmp_path):
    started = time.time()
    out = subprocess.run(
        [sys.executable, __file__, "random-kills", str(tmp_path)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert len(trials) == 10 and all(t["signal"] == signal.SIGKILL for t in trials)
    rounds = [check_store(tmp_path / t["trial"], set(range(2, 100_000))) for t in trials]
    assert len(set(rounds)) > 2  # the kills fell into different saves
    print(f"random kills after rounds {rounds}: {time.time() - started:.0f} s")


# ---------------------------------------------------------------------------------------------
# Part 1: a real server killed after round 2 and resumed


def gone(pids: set[int], groups: set[int] = frozenset(), wait: float = 15.0) -> bool:
    """Whether none of ``pids`` runs and no process is left in ``groups``."""
    deadline = time.time() + wait
    while time.time() < deadline:
        left = [p for p in pids if alive(p)]
        for group in groups:
            try:
                os.killpg(group, 0)
                left.append(group)
            except ProcessLookupError:
                pass
        if not left:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_server_killed_after_round_2_resumes_to_the_uninterrupted_result(federation_sites, tmp_path):
    rounds, seed = 3, 0  # killed after round 2, resumed for round 3
    cache = federation_sites.parent / "federation-cache"
    settings = {
        "preset": "tiny",
        "strategy": "fedavg",
        "local-epochs": 1,
        "max-windows": 8,
        "eval-pcc-windows": 0,
        "departure-windows": 0,  # the departure share is tested elsewhere
        "classes": "faces,motion,rest,scenes,tools",
        "cache-dir": str(cache),
        "round-timeout": 240.0,
    }
    timings = {}

    # the reference: 4 rounds uninterrupted, same seed
    started = time.time()
    reference = run_federated(
        tmp_path / "reference",
        federation_sites,
        num_sites=2,
        rounds=rounds,
        modality="mixed",
        subjects_per_site=3,
        seed=seed,
        run_config=settings,
        timeout=600,
    )
    timings["uninterrupted"] = time.time() - started

    # the same run, killed once round 2 is recorded
    started = time.time()
    run_dir = (tmp_path / "run").resolve()
    config = {
        "num-server-rounds": rounds,
        "run-dir": str(run_dir),
        "data-root": str(federation_sites),
        "num-sites": 2,
        "modality": "mixed",
        "subjects-per-site": 3,
        "seed": seed,
        "min-available-nodes": 2,
        "site-state-dir": str(tmp_path / "site-state"),
        **settings,
    }
    federation = {"num-supernodes": 2, "client-resources-num-cpus": 2, "client-resources-num-gpus": 0.0}
    home = tmp_path / "flwr-home"
    run_dir.mkdir(parents=True)
    link = LocalSuperLink(home, simulation=True, log_file=run_dir / "superlink.log")
    cli = None
    killed_at, server_processes, groups = None, set(), set()
    try:
        link.start()
        write_connection(home, "local-sim", link.address)
        cmd = [
            "flwr",
            "run",
            str(simulation_app(tmp_path / "simulation-app")),  # the app run_federated runs, as the reference
            "local-sim",
            "--stream",
            "--run-config",
            " ".join(f"{k}={_toml_value(v)}" for k, v in config.items()),
            "--federation-config",
            " ".join(f"{k}={_toml_value(v)}" for k, v in federation.items()),
        ]
        with open(run_dir / "flwr-run.log", "ab") as log:
            cli = subprocess.Popen(
                cmd, env=flower_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + 600
        while time.time() < deadline:
            server_processes |= descendants(link.proc.pid)  # the ServerApp, the simulation, Ray
            latest = run_dir / "latest.json"
            if latest.is_file() and json.loads(latest.read_text())["round"] >= 2:
                killed_at = json.loads(latest.read_text())["round"]
                killed, groups = kill_tree(link.proc.pid)  # the SuperLink, its ServerApp, Ray
                server_processes |= killed
                break
            assert link.proc.poll() is None and cli.poll() is None, (run_dir / "flwr-run.log").read_text()[-3000:]
            time.sleep(0.1)
        assert killed_at is not None, "round 2 was never recorded"
        link.proc.wait(timeout=30)
        assert gone(server_processes, groups), f"left running: {sorted(p for p in server_processes if alive(p))}"
    finally:
        if cli is not None:
            stop_process(cli)  # `flwr run --stream` loses its SuperLink
        link.stop()
        for pid in server_processes:  # never leave anything behind, even when an assertion failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert link.proc.returncode == -signal.SIGKILL and cli.returncode is not None and gone({cli.pid}, {cli.pid})
    assert len(groups) >= 2 and len(server_processes) >= 3  # the SuperLink's group and the ServerApp's, and Ray
    history = json.loads((run_dir / "history.json").read_text())
    assert killed_at in (2, 3) and [e["round"] for e in history] in (
        [1],
        [1, 2],
        [1, 2, 3],
    )  # history.json follows latest.json
    timings["killed run"] = time.time() - started

    # a new SuperLink and `flwr run` with resume=true
    started = time.time()
    run_federated(
        run_dir,
        federation_sites,
        num_sites=2,
        rounds=rounds,
        modality="mixed",
        subjects_per_site=3,
        seed=seed,
        run_config={**settings, "resume": True, "site-state-dir": str(tmp_path / "site-state")},
        timeout=600,
    )
    timings["resumed run"] = time.time() - started

    history = json.loads((run_dir / "history.json").read_text())
    expected = json.loads((reference / "history.json").read_text())
    assert [e["round"] for e in history] == list(range(1, rounds + 1))  # every round once
    assert json.loads((run_dir / "latest.json").read_text()) == {
        "round": rounds,
        "checkpoint": f"rounds/round-{rounds:04d}",
    }
    model, meta = load_checkpoint(run_dir / "checkpoint", device="cpu")
    assert meta["provenance"]["rounds"] == rounds
    # the rounds before the kill are the reference's (same seed, same data, deterministic)
    for got, want in zip(history[:killed_at], expected[:killed_at]):
        assert got["evaluate"]["aggregate"]["loss"] == pytest.approx(want["evaluate"]["aggregate"]["loss"], rel=1e-4)
    # The resumed rounds continue from the same weights, strategy state and learning-rate
    # schedule (sites derive their place in it from the round number), with the same seeds:
    # they reproduce the uninterrupted run up to floating-point noise.
    final, want = history[-1]["evaluate"]["aggregate"]["loss"], expected[-1]["evaluate"]["aggregate"]["loss"]
    print(
        f"final held-out loss: resumed {final:.5f}, uninterrupted {want:.5f}; killed after round {killed_at}; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    )
    assert final == pytest.approx(want, rel=1e-3)
    # not the round-2 model again: the resumed round trained the weights further (the held-out
    # diffusion loss hardly moves in 3 rounds: the DiT starts at the noise model's exact Gaussian)
    before, _ = load_checkpoint(run_dir / "rounds" / f"round-{rounds - 1:04d}", device="cpu")
    earlier = dict(before.named_parameters())
    assert any(
        p.requires_grad and not np.array_equal(p.detach(), earlier[n].detach()) for n, p in model.named_parameters()
    )
    assert np.isfinite(history[-1]["train"]["aggregate"]["loss"])


def test_a_round_reaches_the_disk_before_latest_json_names_it(tmp_path, monkeypatch):
    """Every file of the round folder, and the folder's rename, are fsynced before latest.json
    is written (a power loss cannot leave latest.json naming a round with missing data)."""
    import fedneurogen.server.checkpointing as checkpointing

    events: list[str] = []
    real_fsync, real_write = os.fsync, checkpointing.write_json_atomic

    def fsync(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def write_json(path, obj, *args, **kwargs):
        events.append(f"write {Path(path).name}")
        return real_write(path, obj, *args, **kwargs)

    monkeypatch.setattr(checkpointing.os, "fsync", fsync)
    monkeypatch.setattr(checkpointing, "write_json_atomic", write_json)
    store = RunStore(tmp_path / "run")
    final = _save(store, NeuroGenModel("tiny", device="cpu"), 1)
    before_latest = events[: events.index("write latest.json")]
    synced = {Path(e.split(" ", 1)[1]).name for e in before_latest if e.startswith("fsync ")}
    assert {p.name for p in final.iterdir()} <= synced  # each file of the round (under its temporary name's folder)
    assert f"fsync {tmp_path / 'run' / 'rounds'}" in before_latest  # and the rename into rounds/
