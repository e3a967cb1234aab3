"""Commands for a deployed federation: ``app-hash`` (the line of a site's app allowlist), ``certs``
(TLS and SuperNode keys), ``keys`` (checkpoint signing keys) and ``consortium`` (a local rehearsal
consortium; a real coordinator's proxy)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedneurogen.cli.common import SimModality, app, console, err_console, fail_on


@app.command("app-hash")
def app_hash_command(
    app_folder: Path = typer.Option(None, "--app", help="The Flower app folder (default: this FedNeuroGen release)."),
) -> None:
    """The SHA-256 of the app a run of this release sends: the line a site puts in its allowlist of apps.

    The allowlist is read by the site's app gate (fedneurogen.client.site_exec)."""
    from fedneurogen.shared.deploy.apps import app_hash
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.simulations.federated import app_dir

    folder = app_folder or app_dir()
    try:
        console.print(f"{app_hash(folder)}  # {folder}", highlight=False, soft_wrap=True)
    except ConfigError as err:
        fail_on(err)


certs_app = typer.Typer(
    help="Certificates and keys for a deployed federation (TLS, SuperNode authentication).", no_args_is_help=True
)
app.add_typer(certs_app, name="certs")


def _certs_call(fn, *args, **kwargs):
    from fedneurogen.shared.errors import ConfigError

    try:
        return fn(*args, **kwargs)
    except ConfigError as err:
        fail_on(err)


@certs_app.command("ca")
def certs_ca(
    out: Path = typer.Option(..., "--out", help="Folder for ca.crt and ca.key (keep ca.key on the coordinator only)."),
    organization: str = typer.Option(
        "FedNeuroGen consortium", "--organization", help="Organization named in the certificates."
    ),
    days: int = typer.Option(3650, "--days", min=1, help="Validity in days."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing CA (every site must then get the new ca.crt)."
    ),
) -> None:
    """Create the consortium's certificate authority."""
    from fedneurogen.shared.deploy.pki import make_ca

    pair = _certs_call(make_ca, out, organization=organization, days=days, force=force)
    console.print(
        f"CA certificate: [bold]{pair.certificate_or_public}[/] (give it to every site)\nCA key:         {pair.private} (keep it here)"
    )


@certs_app.command("server")
def certs_server(
    ca: Path = typer.Option(..., "--ca", help="Folder holding ca.crt and ca.key."),
    out: Path = typer.Option(..., "--out", help="Folder for superlink.crt and superlink.key."),
    host: list[str] = typer.Option(
        ..., "--host", help="A host name or IP address sites use to reach the SuperLink (repeat for each)."
    ),
    days: int = typer.Option(825, "--days", min=1, help="Validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate."),
) -> None:
    """Create the SuperLink's TLS certificate, signed by the CA, valid for the given hosts."""
    from fedneurogen.shared.deploy.pki import make_server_certificate

    pair = _certs_call(make_server_certificate, ca, out, host, days=days, force=force)
    console.print(
        f"SuperLink certificate: [bold]{pair.certificate_or_public}[/] (names: {', '.join(host)})\nSuperLink key:         {pair.private}"
    )


@certs_app.command("node-key")
def certs_node_key(
    out: Path = typer.Option(..., "--out", help="Folder for the key pair."),
    name: str = typer.Option(..., "--name", help="Key name, e.g. the site's name (site-01)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair (register the new public key)."),
) -> None:
    """Create a site's SuperNode authentication key pair (send only the .pub to the coordinator)."""
    from fedneurogen.shared.deploy.pki import make_node_keypair

    pair = _certs_call(make_node_keypair, out, name, force=force)
    console.print(
        f"private key: [bold]{pair.private}[/] (stays at the site, mode 0600)\npublic key:  {pair.certificate_or_public} (send to the coordinator)"
    )


@certs_app.command("check")
def certs_check(
    cert: Path = typer.Option(..., "--cert", help="The SuperLink certificate."),
    ca: Path = typer.Option(..., "--ca-cert", help="The CA certificate sites use (ca.crt)."),
    host: list[str] = typer.Option(..., "--host", help="A name sites dial (repeat for each)."),
) -> None:
    """Check that sites dialling HOST will accept the SuperLink's certificate."""
    from fedneurogen.shared.deploy.pki import check_server_certificate

    problems = [p for h in host for p in check_server_certificate(cert, ca, h)]
    for problem in problems:
        err_console.print(f"[bold red]problem:[/] {problem}")
    if problems:
        raise typer.Exit(1)
    console.print(f"{cert}: signed by {ca}, valid now, names {', '.join(host)}")


keys_app = typer.Typer(
    help="Checkpoint signing keys: every checkpoint is signed by its writer's key and loads only for a user who "
    "trusts that key (their own, or one trusted with `keys trust`).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("export")
def keys_export(
    out: Path | None = typer.Option(None, "--out", help="Write the public key to this file (default: stdout)."),
) -> None:
    """Print (or write) this user's public signing key, for others to trust: a coordinator hands it to the sites,
    which run `fedneurogen keys trust FILE` once. The key is made on first use."""
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.shared.io import write_text_atomic
    from fedneurogen.shared.signing import key_id, own_key, public_key_pem

    try:
        public = own_key().public_key()
    except ConfigError as err:
        fail_on(err)
    if out is None:
        print(public_key_pem(public), end="")
    else:
        write_text_atomic(out, public_key_pem(public))
        console.print(f"public key {key_id(public)} written to [bold]{out}[/]", highlight=False)


@keys_app.command("trust")
def keys_trust(
    public_key: Path = typer.Argument(..., help="A public key file from another user's `fedneurogen keys export`."),
) -> None:
    """Trust a public key: checkpoints it signed load for this user (e.g. the coordinator's server rounds)."""
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.shared.signing import trust_key

    try:
        ident, stored = trust_key(public_key)
    except ConfigError as err:
        fail_on(err)
    console.print(f"trusted key {ident} (kept as {stored})", highlight=False)


@keys_app.command("list")
def keys_list() -> None:
    """This user's key id and the keys it trusts."""
    from fedneurogen.shared.errors import ConfigError
    from fedneurogen.shared.signing import TRUSTED_DIR, key_dir, key_id, own_key, read_public_key

    try:
        console.print(f"own key:     {key_id(own_key().public_key())} ({key_dir()})", highlight=False)
        for file in sorted((key_dir() / TRUSTED_DIR).glob("*.pub")):
            console.print(f"trusted key: {key_id(read_public_key(file))} ({file})", highlight=False)
    except ConfigError as err:
        fail_on(err)


consortium_app = typer.Typer(
    help="A local consortium on loopback for rehearsal (TLS, node authentication, the proxy); a real coordinator's proxy.",
    no_args_is_help=True,
)
app.add_typer(consortium_app, name="consortium")


@consortium_app.command("up")
def consortium_up(
    folder: Path = typer.Argument(..., help="The consortium's folder (certificates, keys, logs, endpoints.env)."),
    sites: int = typer.Option(2, "--sites", min=1, help="Site daemons to start."),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="BIDS folders site-01, site-02, ... used read-only as they are (default DIR/data, simulated when absent).",
    ),
    modality: SimModality = typer.Option(SimModality.fmri, "--modality", help="Simulated sites' target modality."),
    subjects_per_site: int = typer.Option(3, "--subjects-per-site", min=1, help="Simulated subjects per site."),
    site_config: str = typer.Option(
        'dp-max-epsilon="10" dp-max-delta="1e-5"',
        "--site-config",
        help="Added to every site's node config (its privacy policy).",
    ),
    allowed_apps: Path | None = typer.Option(
        None, "--allowed-apps", help="The sites' allowlist of app hashes (default: this FedNeuroGen release)."
    ),
    simulate: bool = typer.Option(
        False, "--simulate", help="Simulate the missing sites of a data root that the simulator made (never over data)."
    ),
) -> None:
    """Start the SuperLink behind its proxy and authenticated site daemons, as real processes."""
    from fedneurogen.shared.errors import FedNeuroGenError
    from fedneurogen.simulations.consortium import CONNECTION, up

    try:
        endpoints = up(
            folder, sites=sites, data_root=data_root, modality=modality.value, subjects_per_site=subjects_per_site,
            site_config=site_config, allowed_apps=allowed_apps, simulate=simulate,
        )  # fmt: skip
    except FedNeuroGenError as err:
        fail_on(err)
    print(f"consortium up in {folder.resolve()}:")
    print(endpoints.env_file(), end="")
    print(f"submit a run: FLWR_HOME={endpoints.flwr_home} flwr run . {CONNECTION}")


@consortium_app.command("down")
def consortium_down(folder: Path = typer.Argument(..., help="The folder given to `up`.")) -> None:
    """Stop exactly the processes `up` started."""
    from fedneurogen.simulations.consortium import down

    names = down(folder)
    print(f"stopped: {', '.join(names)}" if names else f"nothing running in {folder}")


@consortium_app.command("proxy-config")
def consortium_proxy_config(
    out: Path = typer.Option(..., "--out", help="The nginx.conf to write."),
    site_listen: str = typer.Option(..., "--site-listen", help="address:port the sites reach, e.g. 0.0.0.0:8443."),
    admin_listen: str = typer.Option(
        ..., "--admin-listen", help="address:port on the admins' network only, e.g. 10.1.0.5:9443."
    ),
    certs: Path = typer.Option(
        ..., "--certs", help="Folder with superlink.crt, superlink.key, ca.crt (fedneurogen certs / make-certs.sh)."
    ),
    upstream: str = typer.Option("127.0.0.1:8000", "--upstream", help="Where the SuperLink listens (loopback)."),
    upstream_name: str = typer.Option("localhost", "--upstream-name", help="A name the SuperLink's certificate lists."),
    state: Path = typer.Option(Path("/var/lib/fedneurogen/proxy"), "--state", help="The proxy's pid file and logs."),
) -> None:
    """Write the proxy's nginx.conf for a real coordinator: sites get the Fleet API only, admins
    the Control API only (deploy/README.md)."""
    from fedneurogen.shared.io import write_text_atomic
    from fedneurogen.shared.deploy.proxy import CONTROL_PREFIX, FLEET_PREFIX, nginx_config
    from fedneurogen.shared.deploy.tls import TlsFiles

    from fedneurogen.shared.errors import FedNeuroGenError

    try:
        tls = TlsFiles.in_folder(certs)
        tls.flags()  # the three files exist, or a ConfigError names the missing one
        text = nginx_config(state, tls, upstream, site_listen, admin_listen, upstream_name=upstream_name)
        write_text_atomic(out, text)
    except FedNeuroGenError as err:
        fail_on(err)
    print(f"wrote {out}: sites {site_listen} -> {FLEET_PREFIX}, admins {admin_listen} -> {CONTROL_PREFIX}")
