"""A secured deployment on loopback, built with the deploy kit's own scripts: a SuperLink with
TLS and SuperNode authentication, two registered site daemons that train a round of the tiny
preset, an unregistered site that is refused, and a site given the wrong CA that fails on the
certificate. Every process is started in its own session and stopped, with its children."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedneurogen.shared.deploy.tls import TlsFiles
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.deploy.pki import check_server_certificate, make_ca, make_node_keypair, make_server_certificate
from fedneurogen.simulations.federated import (
    LocalSuperLink,
    flower_env,
    flwr_run,
    start_supernode,
    stop_process,
    write_connection,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "deploy" / "scripts"


def test_certificates_and_keys(tmp_path):
    ca = make_ca(tmp_path / "ca")
    server = make_server_certificate(tmp_path / "ca", tmp_path / "server", ["superlink.hospital.org", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(server.certificate_or_public.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.hospital.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert check_server_certificate(server.certificate_or_public, ca.certificate_or_public, "10.0.0.5") == []
    (problem,) = check_server_certificate(server.certificate_or_public, ca.certificate_or_public, "127.0.0.1")
    assert "does not list '127.0.0.1'" in problem
    other = make_ca(tmp_path / "other")
    assert any(
        "not signed by the CA" in p
        for p in check_server_certificate(server.certificate_or_public, other.certificate_or_public, "10.0.0.5")
    )

    node = make_node_keypair(tmp_path / "keys", "site-01")
    for private in (ca.private, server.private, node.private):  # private keys: owner only
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    # the formats Flower reads: an OpenSSH ECDSA private key and public key on a NIST curve
    key = load_ssh_private_key(node.private.read_bytes(), password=None)
    assert (
        load_ssh_public_key(node.certificate_or_public.read_bytes()).public_numbers()
        == key.public_key().public_numbers()
    )
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(node.certificate_or_public)

    with pytest.raises(ConfigError, match="already exist"):
        make_node_keypair(tmp_path / "keys", "site-01")  # a site's registered key is never replaced silently
    with pytest.raises(ConfigError, match="create the CA first"):
        make_server_certificate(tmp_path / "missing", tmp_path / "server2", ["a.org"])
    with pytest.raises(ConfigError, match="neither an IP address nor a host name"):
        make_server_certificate(tmp_path / "ca", tmp_path / "server3", ["https://a.org"])


def run_script(name: str, *args: str | Path, home: Path | None = None) -> str:
    env = flower_env(home) if home else dict(os.environ)
    out = subprocess.run(
        ["bash", str(SCRIPTS / name), *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture(scope="module")
def secured_round(tmp_path_factory, federation_sites):
    """One round on a TLS + node-authenticated SuperLink; yields what the tests inspect."""
    base = tmp_path_factory.mktemp("secured")
    sites = federation_sites
    certs, keys = base / "certs", base / "keys"
    run_script("make-certs.sh", certs, "127.0.0.1", "localhost")
    for name in ("site-01", "site-02", "site-03"):
        run_script("make-node-key.sh", keys, name)
    make_ca(base / "wrong-ca")  # a CA that did not sign the SuperLink's certificate

    link = LocalSuperLink(base / "superlink-home", simulation=False, tls=TlsFiles.in_folder(certs), node_auth=True)
    cli_home, run_dir = base / "cli-home", base / "run"
    nodes: dict[str, subprocess.Popen] = {}
    result: dict = {"base": base, "run_dir": run_dir}
    try:
        link.start()
        write_connection(cli_home, "consortium", link.address, root_certificates=certs / "ca.crt")
        run_script(
            "register-nodes.sh", "consortium", keys / "site-01.pub", keys / "site-02.pub", home=cli_home
        )  # not site-03
        for i in (1, 2):
            config = f'data-path="{sites / f"site-0{i}"}" state-dir="{base / f"state-{i}"}"'
            nodes[f"site-0{i}"] = start_supernode(
                base / f"node-{i}-home",
                link.address,
                config,
                base / f"site-0{i}.log",
                root_certificates=certs / "ca.crt",
                auth_key=keys / f"site-0{i}",
            )
        nodes["unregistered"] = start_supernode(
            base / "node-3-home",
            link.address,
            f'data-path="{sites / "site-03"}"',
            base / "unregistered.log",
            root_certificates=certs / "ca.crt",
            auth_key=keys / "site-03",
            max_retries=2,
        )
        nodes["wrong-ca"] = start_supernode(
            base / "node-4-home",
            link.address,
            f'data-path="{sites / "site-01"}"',
            base / "wrong-ca.log",
            root_certificates=base / "wrong-ca" / "ca.crt",
            auth_key=keys / "site-01",
            max_retries=2,
        )
        result["exit_unregistered"] = wait_exit(nodes["unregistered"], 90)
        result["exit_wrong_ca"] = wait_exit(nodes["wrong-ca"], 90)
        started = time.time()
        flwr_run(
            cli_home,
            "consortium",
            {
                "num-server-rounds": 1,
                "run-dir": str(run_dir),
                "preset": "tiny",
                "local-epochs": 1,
                "max-windows": 8,
                "classes": "faces,motion,rest,scenes,tools",
                "fraction-evaluate": 0.0,
                "min-available-nodes": 2,
                "round-timeout": 240.0,
                "cache-dir": str(sites.parent / "federation-cache"),
            },
            timeout=420,
            log_file=base / "flwr-run.log",
        )
        result["round_seconds"] = time.time() - started
        listed = subprocess.run(
            ["flwr", "supernode", "list", "consortium", "--format", "json"],
            env=flower_env(cli_home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        result["nodes"] = json.loads(listed.stdout)
    finally:
        for proc in nodes.values():
            stop_process(proc)
        link.stop()
    result["processes"] = [*nodes.values(), link.proc]
    yield result


@pytest.mark.slow
def test_tls_superlink_and_registered_sites_complete_a_round(secured_round):
    history = json.loads((secured_round["run_dir"] / "history.json").read_text())
    (entry,) = history
    assert not entry["train"]["failed"] and len(entry["train"]["sites"]) == 2  # exactly the registered sites
    assert all(m["num-examples"] == 8 for m in entry["train"]["sites"].values())
    assert (secured_round["run_dir"] / "checkpoint" / "model.safetensors").is_file()
    assert all(p.poll() is not None for p in secured_round["processes"])  # every process stopped


@pytest.mark.slow
def test_site_with_the_wrong_ca_fails_on_the_certificate(secured_round):
    assert secured_round["exit_wrong_ca"] not in (None, 0)  # it gave up instead of hanging
    log = (secured_round["base"] / "wrong-ca.log").read_text(errors="replace")
    assert "CERTIFICATE_VERIFY_FAILED" in log


@pytest.mark.slow
def test_unregistered_site_is_refused(secured_round):
    assert secured_round["exit_unregistered"] not in (None, 0)
    log = (secured_round["base"] / "unregistered.log").read_text(errors="replace")
    assert "Failed to activate SuperNode" in log
    nodes = secured_round["nodes"]["nodes"] if isinstance(secured_round["nodes"], dict) else secured_round["nodes"]
    assert len(nodes) == 2  # only the two registered keys are known to the SuperLink
