"""Signed checkpoints (issue 26 item 7): a checkpoint loads only when its manifest is signed by the
loading user's key or a key that user trusts; anything else needs ``--trust-unsigned``.

Every test here runs under its own ``FEDNEUROGEN_HOME`` (``home``), so the keys it makes, trusts
or loses are its own; switching the variable switches the user.
"""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
from typer.testing import CliRunner

from fedneurogen.cli import app
from fedneurogen.shared import signing
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import file_sha256
from fedneurogen.shared.model import EMA, load_checkpoint, read_checkpoint_config, save_checkpoint
from test_model import tiny_model

runner = CliRunner()
EXTRA = {"preprocess": PreprocessConfig().model_dump(), "class_names": ["faces", "scenes"]}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Switch to the user whose key folder is ``tmp_path/<name>``; starts as ``coordinator``."""

    def use(name: str):
        folder = tmp_path / name
        monkeypatch.setenv(signing.HOME_ENV, str(folder))
        return folder

    use("coordinator")
    return use


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def _checkpoint(model, path):
    return save_checkpoint(path, model, ema=EMA(model, decay=0.9), extra=EXTRA)  # synthesize samples the EMA


def test_the_key_is_made_once_private_and_never_replaced(home, tmp_path):
    """First use makes the key 0600 in a 0700 folder, with no temporary file left; threads that
    make it at once all get the one key; a later use reads it back."""
    folder = home("fresh")
    assert not (folder / "keys").exists()
    keys: list[str] = []
    threads = [
        threading.Thread(target=lambda: keys.append(signing.key_id(signing.own_key().public_key()))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    key_file = folder / "keys" / signing.PRIVATE_KEY_FILE
    assert len(set(keys)) == 1 and len(keys) == 6
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder / "keys").st_mode) == 0o700
    assert sorted(p.name for p in (folder / "keys").iterdir()) == [signing.PRIVATE_KEY_FILE]
    assert signing.key_id(signing.own_key().public_key()) == keys[0]
    assert signing.key_dir() == folder / "keys"


def test_the_key_folder_is_fedneurogen_home_else_the_users_home(monkeypatch, tmp_path):
    monkeypatch.delenv(signing.HOME_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert signing.key_dir() == tmp_path / "user" / ".fedneurogen" / "keys"
    monkeypatch.setenv(signing.HOME_ENV, str(tmp_path / "elsewhere"))
    assert signing.key_dir() == tmp_path / "elsewhere" / "keys"


def test_an_unwritable_key_folder_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(signing.HOME_ENV, str(blocker))
    with pytest.raises(ConfigError, match=r"cannot create the checkpoint signing key .* set FEDNEUROGEN_HOME"):
        signing.own_key()


def test_a_tampered_config_or_weights_is_refused(home, model, tmp_path):
    """A changed byte is refused by the manifest; a manifest rewritten to match the change (as
    anyone can compute SHA-256) is refused by its signature, naming the checkpoint."""
    path = _checkpoint(model, tmp_path / "ckpt")
    assert read_checkpoint_config(path)["class_names"] == ["faces", "scenes"]
    config = path / "config.json"
    original = config.read_text()
    config.write_text(original.replace('"faces"', '"facts"'))
    with pytest.raises(ConfigError, match=r"config.json is corrupt or was modified"):
        load_checkpoint(path, device="cpu")

    manifest = path / "MANIFEST.sha256"
    manifest.write_text(
        "".join(f"{file_sha256(path / name)}  {name}\n" for name in ("config.json", "model.safetensors"))
    )  # the attacker's rehash: every line matches, the signature does not
    with pytest.raises(
        ConfigError,
        match=rf"^checkpoint {path} has a signature that does not match its MANIFEST.sha256 .*--trust-unsigned",
    ):
        load_checkpoint(path, device="cpu")

    (path / "MANIFEST.sha256.sig").write_text('{"key_id": "../../x", "signature": "AA=="}')
    with pytest.raises(ConfigError, match=r"has an unreadable signature MANIFEST.sha256.sig"):
        load_checkpoint(path, device="cpu")

    config.write_text(original)
    path = _checkpoint(model, tmp_path / "ckpt")  # signed afresh
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"model.safetensors are corrupt or were modified"):
        load_checkpoint(path, device="cpu")
    (path / "MANIFEST.sha256.sig").unlink()  # unsigned now: accepted by the flag, still hash-checked
    with pytest.warns(signing.UntrustedCheckpointWarning), pytest.raises(ConfigError, match="corrupt or were modified"):
        load_checkpoint(path, device="cpu", trust_unsigned=True)


def test_a_checkpoint_signed_by_another_key_loads_only_once_its_key_is_trusted(home, model, tmp_path):
    """The coordinator's checkpoint is refused at a site, naming the key and the way to trust it;
    after `keys export` there and `keys trust` here it loads. The site's own checkpoints load
    all along, and another, untrusted user's still do not."""
    path = _checkpoint(model, tmp_path / "global")
    exported = tmp_path / "coordinator.pub"
    result = runner.invoke(app, ["keys", "export", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    coordinator_id = signing.key_id(signing.read_public_key(exported))
    assert coordinator_id in result.output
    printed = runner.invoke(app, ["keys", "export"])
    assert printed.stdout == exported.read_text() and printed.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert json.loads((path / "MANIFEST.sha256.sig").read_text())["key_id"] == coordinator_id

    site = home("site")
    with pytest.raises(
        ConfigError,
        match=rf"^checkpoint {path} is signed by key {coordinator_id}, which this user does not trust .*keys trust FILE.*--trust-unsigned",
    ):
        load_checkpoint(path, device="cpu")
    assert not (site / "keys").exists()  # loading makes no key
    own = _checkpoint(model, tmp_path / "local")
    load_checkpoint(own, device="cpu")

    refused = runner.invoke(app, ["keys", "trust", str(tmp_path / "local" / "config.json")])
    assert refused.exit_code == 2 and "not a readable public key" in refused.output
    trusted = runner.invoke(app, ["keys", "trust", str(exported)])
    assert trusted.exit_code == 0, trusted.output
    assert coordinator_id in trusted.output
    load_checkpoint(path, device="cpu")
    listed = runner.invoke(app, ["keys", "list"], terminal_width=200)
    assert listed.exit_code == 0 and f"trusted key: {coordinator_id}" in listed.output

    home("stranger")
    _checkpoint(model, tmp_path / "stranger")
    home("site")
    with pytest.raises(ConfigError, match="which this user does not trust"):
        load_checkpoint(tmp_path / "stranger", device="cpu")


def test_every_command_that_loads_a_checkpoint_takes_trust_unsigned():
    for command in (["synthesize"], ["evaluate"], ["augment"], ["explain"], ["train"], ["fairness-table"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0 and "--trust-unsigned" in result.output, command


def test_an_unsigned_checkpoint_is_refused_by_synthesize_unless_trust_unsigned(home, model, small_fmri_sites, tmp_path):
    """The CLI as a user runs it: one line naming the checkpoint, the problem and the flag, exit
    2; with ``--trust-unsigned`` a warning and the files are written; a changed byte is still
    refused with the flag (the manifest's hashes)."""
    path = _checkpoint(model, tmp_path / "ckpt")
    (path / "MANIFEST.sha256.sig").unlink()
    site = small_fmri_sites[0]
    args = ["synthesize", "--checkpoint", str(path), "--data", str(site), "--estimate", "mean", "--subjects", "01"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "refused"), "--device", "cpu"], terminal_width=400)
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {path} is not signed")
    assert "--trust-unsigned" in lines[0] and "Traceback" not in refused.output

    loaded = runner.invoke(
        app, [*args, "--out", str(tmp_path / "out"), "--device", "cpu", "--trust-unsigned"], terminal_width=400
    )
    assert loaded.exit_code == 0, loaded.output
    assert f"warning: checkpoint {path} is not signed" in loaded.output and "--trust-unsigned" in loaded.output
    assert list((tmp_path / "out").rglob("*.func.gii"))

    config = path / "config.json"
    config.write_text(config.read_text().replace('"faces"', '"facts"'))
    tampered = runner.invoke(
        app, [*args, "--out", str(tmp_path / "tampered"), "--device", "cpu", "--trust-unsigned"], terminal_width=400
    )
    assert tampered.exit_code == 2 and "config.json is corrupt or was modified" in tampered.output


def test_a_server_round_is_signed_and_resumed_by_its_own_user_only(home, model, tmp_path):
    """The server signs every round with its user's key; resume verifies it, and another user's
    server (another key folder) is told how to proceed rather than resuming rounds it cannot vouch for."""
    import numpy as np

    from fedneurogen.server.checkpointing import RunStore

    store = RunStore(tmp_path / "run")
    folder = store.save_round(1, model, {"momentum": np.zeros(3, np.float32)}, [{"round": 1}], {"class_names": ["a"]})
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "MANIFEST.sha256",
        "MANIFEST.sha256.sig",
        "config.json",
        "history.json",
        "model.safetensors",
        "strategy.safetensors",
    ]
    assert "MANIFEST.sha256.sig" not in (folder / "MANIFEST.sha256").read_text()
    assert store.resume(model)[0] == 1
    load_checkpoint(tmp_path / "run" / "checkpoint", device="cpu")  # what synthesize/evaluate read

    home("other-server")
    with pytest.raises(ConfigError, match=r"the server resumes only rounds signed by the key of the user it runs as"):
        RunStore(tmp_path / "run").resume(model)
