"""The proxy in front of the SuperLink: nginx routes by API.

The SuperLink's one HTTP port serves the sites' Fleet API (``/v1/fleet``), the Control API
(``/v1/control``: submit, list and stop runs, register nodes) and the Runtime API
(``/v1/runtime``) alike, so it is never exposed itself. nginx stands in front with two TLS
listeners: the **site address** forwards ``/v1/fleet`` only, the **admin address**
``/v1/control`` only; everything else is answered 403. ``nginx_config`` writes it for a real
coordinator (``fedneurogen consortium proxy-config``, deploy/docker/proxy.conf) and for the
local consortium (``fedneurogen.simulations.consortium``).
"""

from __future__ import annotations

from pathlib import Path

from fedneurogen.shared.deploy.tls import TlsFiles

#: The path prefix of each API on the SuperLink's one HTTP port (flwr 1.42's routers, unchanged since 1.41).
FLEET_PREFIX, CONTROL_PREFIX = "/v1/fleet/", "/v1/control/"


def nginx_config(
    folder: Path,
    tls: TlsFiles,
    upstream: str,
    site_listen: str,
    admin_listen: str,
    *,
    upstream_name: str = "localhost",
) -> str:
    """nginx in front of the SuperLink: the one definition of the routing, for the local
    consortium and for ``fedneurogen consortium proxy-config`` (a real coordinator).

    Two TLS listeners: the site one forwards the Fleet API's prefix only, the admin one the
    Control API's; everything else is answered 403.

    Parameters
    ----------
    folder : Path
        Holds nginx's pid file and logs.
    tls : TlsFiles
        The certificate and key the listeners present, and the CA the SuperLink's is checked with.
    upstream : str
        ``host:port`` where the SuperLink listens (HTTPS, loopback or a private network).
    site_listen, admin_listen : str
        ``address:port`` of the site listener and of the admin listener.
    upstream_name : str
        A name the SuperLink's certificate lists (checked by the proxy).

    Returns
    -------
    str
        The ``nginx.conf`` text.
    """

    def server(listen: str, prefix: str, role: str) -> str:
        return f"""
    server {{  # {role}
        listen {listen} ssl http2;
        ssl_certificate {tls.certificate};
        ssl_certificate_key {tls.private_key};
        location {prefix} {{
            proxy_pass https://superlink;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_ssl_trusted_certificate {tls.ca_certificate};
            proxy_ssl_verify on;
            proxy_ssl_name {upstream_name};
            # stream both ways, nothing to disk: long polls and logs pass through as they come,
            # and nginx's workers (an unprivileged user) need no writable folder here
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            client_max_body_size 0;  # apps and model updates are large
        }}
        location / {{ return 403; }}
    }}"""

    return f"""# written by fedneurogen.shared.deploy.proxy; the SuperLink itself listens on {upstream} only
daemon off;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log {folder / "access.log"};
    # nginx creates these at start; nothing is buffered to them (see below)
    client_body_temp_path {folder / "client_body"};
    proxy_temp_path {folder / "proxy"};
    fastcgi_temp_path {folder / "fastcgi"};
    uwsgi_temp_path {folder / "uwsgi"};
    scgi_temp_path {folder / "scgi"};
    upstream superlink {{ server {upstream}; }}
{server(site_listen, FLEET_PREFIX, "site address: the Fleet API, nothing else")}
{server(admin_listen, CONTROL_PREFIX, "admin address: the Control API, nothing else")}
}}
"""
