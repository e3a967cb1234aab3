"""Static checks of the deploy kit (deploy/): compose files, Dockerfile, systemd units, README.

No Docker engine or systemd is needed: the files are parsed (PyYAML, configparser) and checked
against the installed Flower's conventions and this package's run config.
"""

from __future__ import annotations

import ast
import configparser
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
SYSTEMD = DEPLOY / "systemd"
README = DEPLOY / "README.md"
COMPOSE_FILES = ("compose.yml", "compose.site.yml", "compose.rehearsal.yml")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUN_CONFIG_KEYS = set(PYPROJECT["tool"]["flwr"]["app"]["config"])
NODE_CONFIG_KEYS = {"data-path", "state-dir", "dp-required"}  # every shipped site requires DP
from fedneurogen.client.refusal import POLICY_KEYS  # noqa: E402  (a site's privacy policy, documented beside)


def _pin(name: str) -> str:
    """The version pyproject pins for a dependency (``name==X`` or ``name[extra]==X``)."""
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject pins no {name}")


FLWR_VERSION = _pin("flwr")
TORCH_VERSION = _pin("torch")
FLOWER_IMAGES = {f"flwr/superlink:{FLWR_VERSION}", f"flwr/supernode:{FLWR_VERSION}"}
PROXY_IMAGE = "nginx:1.27-alpine"  # the official nginx image, in front of the coordinator's SuperLink

# Files and folders made at run time by the documented steps (deploy/README.md, deploy/scripts),
# relative to deploy/docker: {folder: pattern of the names in it}.
RUNTIME_FILES = {
    "certs": r"ca\.crt|superlink\.crt|superlink\.key",
    "runtime-certs": r"ca\.crt|superlink\.crt|superlink\.key",
    "rehearsal/certs": r"ca\.crt|superlink\.crt|superlink\.key",
    "rehearsal/runtime-certs": r"ca\.crt|superlink\.crt|superlink\.key",
    "keys": r"\$\{SITE_NAME\}",
    "rehearsal/keys": r"hospital-[abc]",
    "rehearsal": r"allowed-apps\.txt",
    "secrets": r"[\w.-]+\.secret",
    "rehearsal/secrets": r"[\w.-]+\.secret",
}
RUNTIME_DIRS = {
    "state",
    "rehearsal/state",
    "rehearsal/data/site-01",
    "rehearsal/data/site-02",
    "rehearsal/data/site-03",
}


def load_compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=COMPOSE_FILES)
def compose(request) -> tuple[str, dict]:
    return request.param, load_compose(request.param)


def command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flags(args: list[str]) -> dict[str, str | None]:
    """``--flag value`` / ``--flag=value`` / bare ``--flag`` -> {flag: value or None}."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                key, value = arg.split("=", 1)
                out[key] = value
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[arg] = args[i + 1]
                i += 1
            else:
                out[arg] = None
        i += 1
    return out


def kind(service: dict) -> str:
    """superlink | supernode | superexec | proxy, from the image or the built Dockerfile."""
    image = str(service.get("image", ""))
    if "build" in service:
        return "superexec"
    if image == PROXY_IMAGE:
        return "proxy"
    for k in ("superlink", "supernode"):
        if image.startswith(f"flwr/{k}:"):
            return k
    raise AssertionError(f"unknown service image {image!r}")


def services_of(doc: dict, k: str) -> dict[str, dict]:
    return {name: s for name, s in doc["services"].items() if kind(s) == k}


def interpolate(text: str) -> str | None:
    """Compose interpolation with an empty environment: ``${V:-default}`` -> default; a
    required or unset variable is kept as ``${V}`` (checked separately)."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)
    return re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", lambda m: "${" + m.group(1) + "}", text)


def split_volume(vol: str | dict) -> tuple[str, str, str]:
    """``SOURCE:TARGET[:MODE]`` -> (source, target, mode); colons inside ``${...}`` stay."""
    if isinstance(vol, dict):
        return vol["source"], vol["target"], "ro" if vol.get("read_only") else "rw"
    spans = re.findall(r"\$\{[^}]*\}", vol)
    masked = re.sub(r"\$\{[^}]*\}", "\0", vol)
    parts = masked.split(":")
    for span in spans:
        for i, part in enumerate(parts):
            if "\0" in part:
                parts[i] = part.replace("\0", span, 1)
                break
    return parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"


def volumes(service: dict) -> list[tuple[str, str, str]]:
    return [split_volume(v) for v in service.get("volumes", [])]


def secret_targets(service: dict) -> set[str]:
    out = set()
    for s in service.get("secrets", []):
        out.add(
            f"/run/secrets/{s['target'] if isinstance(s, dict) and 'target' in s else (s['source'] if isinstance(s, dict) else s)}"
        )
    return out


def check_host_path(raw: str, where: str) -> None:
    """A bind-mounted or secret file: in the repository, or made by the documented steps."""
    path = interpolate(raw)
    if "${" in path:  # a required variable: the site's env template must set it
        for var in re.findall(r"\$\{(\w+)\}", path):
            assert re.search(rf"^{var}=", (DOCKER / "site.env.example").read_text(), re.M), (
                f"{where}: {var} not in site.env.example"
            )
        if path.startswith("${"):
            return
    rel = Path(path)
    assert not rel.is_absolute(), f"{where}: absolute host path {path}"
    if (DOCKER / rel).exists():
        return
    folder, name = rel.parent.as_posix().removeprefix("./"), rel.name
    if rel.as_posix().removeprefix("./") in RUNTIME_DIRS:
        folder, name = rel.as_posix().removeprefix("./"), None
    readme = README.read_text(encoding="utf-8")
    if name is None:
        assert folder in RUNTIME_DIRS, f"{where}: {path} is neither in the repository nor a documented runtime folder"
        top = (
            folder.split("/")[0]
            if not folder.startswith("rehearsal/")
            else folder.rsplit("/", 1)[0]
            if folder.startswith("rehearsal/data")
            else folder
        )
        assert top in readme, f"{where}: runtime folder {folder} is not documented in deploy/README.md"
        return
    assert folder in RUNTIME_FILES, f"{where}: {path} is neither in the repository nor made by the documented steps"
    assert re.fullmatch(RUNTIME_FILES[folder], name), f"{where}: {name} is not a file the scripts make in {folder}"
    assert folder in readme, f"{where}: {folder} is not documented in deploy/README.md"


# ---------------------------------------------------------------------------------------------
# compose


def test_expected_services():
    assert set(load_compose("compose.yml")["services"]) == {"superlink", "serverapp", "proxy"}
    assert set(load_compose("compose.site.yml")["services"]) == {"supernode", "clientapp"}
    rehearsal = load_compose("compose.rehearsal.yml")["services"]
    assert {"superlink", "serverapp"} <= set(rehearsal)
    assert len(services_of(load_compose("compose.rehearsal.yml"), "supernode")) == 3
    assert len(services_of(load_compose("compose.rehearsal.yml"), "superexec")) == 4  # serverapp + 3 clientapps


def test_images_are_official_flower_images_or_our_dockerfile(compose):
    name, doc = compose
    for sname, s in doc["services"].items():
        if "build" in s:
            context = (DOCKER / s["build"]["context"]).resolve()
            assert context == ROOT, f"{name}:{sname}: build context must be the repository root"
            assert (context / s["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        else:
            assert s["image"] in FLOWER_IMAGES | {PROXY_IMAGE}, (
                f"{name}:{sname}: {s['image']} is not an official Flower {FLWR_VERSION} or nginx image"
            )


def test_referenced_files_exist_or_are_documented_runtime_paths(compose):
    name, doc = compose
    for sname, s in doc["services"].items():
        for source, _, _ in volumes(s):
            if source.startswith((".", "/", "$")):
                check_host_path(source, f"{name}:{sname}")
        for env_file in [s["env_file"]] if isinstance(s.get("env_file"), str) else s.get("env_file", []):
            assert (DOCKER / env_file).is_file(), f"{name}:{sname}: env_file {env_file} missing"
    for sec_name, sec in doc.get("secrets", {}).items():
        check_host_path(sec["file"], f"{name}: secret {sec_name}")
    for script in ("make-certs.sh", "make-node-key.sh", "register-nodes.sh"):
        assert (DEPLOY / "scripts" / script).is_file()


def test_tls_everywhere_and_never_insecure(compose):
    name, doc = compose
    assert "--insecure" not in (DOCKER / name).read_text(encoding="utf-8")
    for sname, s in services_of(doc, "superlink").items():
        f = flags(command(s))
        for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
            assert f.get(flag), f"{name}:{sname}: {flag} missing"
    for sname, s in services_of(doc, "supernode").items():
        assert flags(command(s)).get("--root-certificates"), f"{name}:{sname}: SuperLink not verified"
    for sname, s in services_of(doc, "superexec").items():
        assert flags(command(s)).get("--root-certificates"), f"{name}:{sname}: Runtime API not verified"


def test_mounted_paths_used_by_flags_exist_in_the_container(compose):
    """Every file a flag names is a read-only mount or a secret of that service."""
    name, doc = compose
    for sname, s in doc["services"].items():
        mounted = {target for _, target, mode in volumes(s) if mode == "ro"}
        available = mounted | secret_targets(s)
        for flag, value in flags(command(s)).items():
            if flag in (
                "--ssl-ca-certfile",
                "--ssl-certfile",
                "--ssl-keyfile",
                "--root-certificates",
                "--auth-supernode-private-key",
                "--superexec-auth-secret-file",
            ):
                assert value in available, f"{name}:{sname}: {flag} {value} is not mounted read-only nor a secret"


def test_node_auth_process_isolation_and_no_runtime_installs(compose):
    name, doc = compose
    for sname, s in services_of(doc, "superlink").items():
        f = flags(command(s))
        assert "--enable-supernode-auth" in f and "--disable-runtime-dependency-installation" in f
        assert f.get("--isolation") == "process" and f.get("--superexec-auth-secret-file")
        assert f.get("--host") == "0.0.0.0" and f.get("--database", "").startswith("/app/state/")
    for sname, s in services_of(doc, "supernode").items():
        f = flags(command(s))
        assert f.get("--auth-supernode-private-key", "").startswith("/run/secrets/"), (
            f"{name}:{sname}: no auth private key"
        )
        assert f.get("--isolation") == "process" and f.get("--superexec-auth-secret-file")
        assert all(f.get(k) for k in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile")), (
            f"{name}:{sname}: Runtime API without TLS"
        )
    for sname, s in services_of(doc, "superexec").items():
        f = flags(command(s))
        assert f.get("--superexec-auth-secret-file") and "--plugin-type" not in f  # deprecated and ignored since 1.41
        assert "--allow-runtime-dependency-installation" not in f


def test_only_the_proxy_publishes_the_superlink(compose):
    """The SuperLink's one port serves the Control API: the coordinator publishes it only through
    the proxy (sites: 8443, Fleet API; admins: 9443 on ADMIN_BIND, Control API); the one-machine
    rehearsal publishes it on 127.0.0.1 only; nothing else publishes a port."""
    name, doc = compose
    for sname, s in doc["services"].items():
        ports = [interpolate(str(p)) for p in s.get("ports", [])]
        if kind(s) == "proxy":
            assert ports == ["8443:8443", "127.0.0.1:9443:9443"], f"{name}:{sname}: {ports}"
            assert "${ADMIN_BIND:-127.0.0.1}:" in str(s["ports"][1])
        elif kind(s) == "superlink" and name == "compose.rehearsal.yml":
            assert len(ports) == 1 and ports[0].startswith("127.0.0.1:") and ports[0].endswith(":8000"), (
                f"{name}:{sname}: {ports}"
            )
        else:
            assert not s.get("ports") and not s.get("expose"), f"{name}:{sname} publishes ports"
    if name == "compose.yml":  # the SuperLink sits on internal networks only, the proxy bridges to it
        nets = doc["networks"]
        assert all((nets.get(n) or {}).get("internal") for n in doc["services"]["superlink"]["networks"])


def test_site_clientapps_run_behind_the_app_allowlist(compose):
    """Every site's ClientApp launcher is the gate (fedneurogen.client.site_exec) with its
    allowlist mounted read-only; the coordinator's ServerApp launcher is plain flower-superexec."""
    name, doc = compose
    for sname, s in services_of(doc, "superexec").items():
        if sname == "serverapp":
            assert "entrypoint" not in s
            continue
        assert s["entrypoint"] == [
            "python",
            "-m",
            "fedneurogen.client.site_exec",
            "--allowed-apps",
            "/etc/fedneurogen/allowed-apps.txt",
        ], f"{name}:{sname}"
        assert ("/etc/fedneurogen/allowed-apps.txt", "ro") in {(t, m) for _, t, m in volumes(s)}, (
            f"{name}:{sname}: allowlist not mounted read-only"
        )


def test_the_shipped_proxy_config_is_the_generated_one():
    """deploy/docker/proxy.conf is what `proxy-config` writes for the container's paths: one
    definition of the routes (shared/deploy/proxy.nginx_config), no hand-edited copy."""
    from fedneurogen.shared.deploy.proxy import nginx_config
    from fedneurogen.shared.deploy.tls import TlsFiles

    expected = nginx_config(
        Path("/tmp"),
        TlsFiles.in_folder("/etc/fedneurogen/certs"),
        "superlink:8000",
        "0.0.0.0:8443",
        "0.0.0.0:9443",
        upstream_name="superlink",
    )
    assert (DOCKER / "proxy.conf").read_text(encoding="utf-8") == expected
    assert "location /v1/fleet/" in expected and "location /v1/control/" in expected and "/v1/runtime/" not in expected


def test_volumes_declared_and_site_paths_mounted(compose):
    name, doc = compose
    declared = set(doc.get("volumes", {}))
    used = set()
    for sname, s in doc["services"].items():
        for source, _, _ in volumes(s):
            if not source.startswith((".", "/", "$")):
                used.add(source)
    assert used == declared, f"{name}: named volumes used {sorted(used)} != declared {sorted(declared)}"
    for sname, s in services_of(doc, "superexec").items():
        if sname == "serverapp":
            assert "/var/lib/fedneurogen/runs" in {t for src, t, _ in volumes(s) if src in declared}, (
                f"{name}: no run-dir volume"
            )
    # each SuperNode's node config names paths its ClientApp container has: data read-only,
    # state on a named volume; the ClientApp reaches only internal networks
    networks = doc.get("networks", {})
    for nname, node in services_of(doc, "supernode").items():
        node_config = flags(command(node))["--node-config"]
        config = dict(re.findall(r'([\w-]+)="([^"]*)"', node_config))
        assert set(config) == NODE_CONFIG_KEYS, node_config
        assert config["dp-required"] == "true", f"{name}: {nname} must ship a DP-required policy"
        apps = [
            s
            for s in services_of(doc, "superexec").values()
            if flags(command(s))["--runtime-api-address"] == f"{nname}:9094"
        ]
        assert len(apps) == 1, f"{name}: {nname} needs exactly one clientapp"
        app = apps[0]
        targets = {target: (source, mode) for source, target, mode in volumes(app)}
        assert targets[config["data-path"]][1] == "ro", "site data must be mounted read-only"
        assert targets[config["state-dir"]][0] in declared and targets[config["state-dir"]][1] == "rw"
        assert app["networks"] and all((networks.get(n) or {}).get("internal") for n in app["networks"]), (
            f"{name}: clientapp must sit on internal networks only"
        )
        assert set(app["networks"]) & set(node["networks"]), f"{name}: clientapp cannot reach {nname}"


def test_rehearsal_matches_the_real_deployment():
    coordinator, site, rehearsal = (load_compose(n) for n in COMPOSE_FILES)
    assert command(rehearsal["services"]["superlink"]) == command(coordinator["services"]["superlink"])
    assert command(rehearsal["services"]["serverapp"]) == command(coordinator["services"]["serverapp"])
    site_flags = flags(command(site["services"]["supernode"]))
    keys = set()
    for nname, node in services_of(rehearsal, "supernode").items():
        f = flags(command(node))
        assert f["--superlink"] == "superlink:8000"
        assert set(f) == set(site_flags), f"{nname}: flags differ from compose.site.yml"
        (key,) = [s["source"] for s in node["secrets"] if isinstance(s, dict) and s.get("target") == "node-key"]
        keys.add(key)
    assert len(keys) == 3, "every rehearsal site needs its own key"


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_every_python_package_is_installed():
    """A regular (non-editable) install, as the Docker image and a GPU machine use, ships every
    folder that holds an ``__init__.py`` under the package map; a missing entry breaks imports
    there only (the editable install in the venv reads the source tree and hides it)."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    assert found - listed == set(), f"pyproject [tool.setuptools] packages misses {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject lists packages with no folder: {sorted(listed - found)}"


def test_dockerfile_installs_pinned_torch_before_the_package():
    lines = [l.strip() for l in (DOCKER / "Dockerfile").read_text(encoding="utf-8").splitlines()]
    assert lines[[l.startswith("FROM") for l in lines].index(True)] == f"FROM flwr/superexec:{FLWR_VERSION}"
    runs = [i for i, l in enumerate(lines) if "pip install" in l]
    torch = [i for i in runs if f"torch=={TORCH_VERSION}" in lines[i]]
    package = [i for i in runs if "/app/src" in lines[i] or re.search(r"pip install[^\n]* \.(\s|$)", lines[i])]
    assert torch, f"the Dockerfile does not install torch=={TORCH_VERSION} (the pyproject pin)"
    assert package, "the Dockerfile does not install this package"
    assert torch[0] < package[0], "torch must be installed before the package"
    assert "--index-url" in lines[torch[0]], "torch must come from an explicit (CPU by default) index"
    assert not any(l.startswith("COPY . ") or l == "COPY . ." for l in lines), (
        "copy the sources only, not the whole context"
    )


# ---------------------------------------------------------------------------------------------
# systemd

UNITS = {
    "fedneurogen-superlink.service": "flower-superlink",
    "fedneurogen-proxy.service": "nginx",
    "fedneurogen-serverapp.service": "flower-superexec",
    "fedneurogen-supernode@.service": "flower-supernode",
    "fedneurogen-clientapp@.service": "python",  # -m fedneurogen.client.site_exec: flower-superexec behind the app allowlist
}
ENV_FILES = {"/etc/fedneurogen/superlink.env": "superlink.env", "/etc/fedneurogen/%i.env": "site.env.example"}


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(SYSTEMD / name, encoding="utf-8")
    return parser


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    return shlex.split(unit["Service"]["ExecStart"].replace("\\\n", " ").replace("\\", " "))


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit(name):
    unit = read_unit(name)
    service = unit["Service"]
    args = exec_start(unit)
    assert Path(args[0]).name == UNITS[name] and Path(args[0]).is_absolute()
    f = flags(args[1:])
    assert "--insecure" not in (SYSTEMD / name).read_text(encoding="utf-8")
    # environment file: shipped here, and it defines every variable the command uses
    env_path = service["EnvironmentFile"]
    assert env_path in ENV_FILES, env_path
    env_text = (SYSTEMD / ENV_FILES[env_path]).read_text(encoding="utf-8")
    for var in re.findall(r"\$\{(\w+)\}", service["ExecStart"]):
        assert re.search(rf"^{var}=\S", env_text, re.M), f"{name}: {var} not set in {ENV_FILES[env_path]}"
    # hardening
    assert service["User"] == "fedneurogen" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["Restart"] == "on-failure"
    writable = service["ReadWritePaths"].split()
    assert writable and all(p.startswith(("/var/lib/fedneurogen/", "/var/cache/fedneurogen/")) for p in writable)
    if UNITS[name] == "nginx":  # the proxy: the SuperLink behind it listens on loopback only
        assert (
            args[1:3] == ["-c", "${PROXY_CONFIG}"]
            and "127.0.0.1" in env_text.split("SUPERLINK_HOST=")[1].splitlines()[0]
        )
        return
    if UNITS[name] == "flower-superlink":
        assert {
            "--ssl-ca-certfile",
            "--ssl-certfile",
            "--ssl-keyfile",
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--superexec-auth-secret-file",
        } <= set(f)
        assert f["--isolation"] == "process" and f["--database"].startswith(writable[0])
    elif UNITS[name] == "flower-supernode":
        assert {
            "--root-certificates",
            "--auth-supernode-private-key",
            "--ssl-certfile",
            "--ssl-keyfile",
            "--ssl-ca-certfile",
            "--superexec-auth-secret-file",
        } <= set(f)
        assert f["--isolation"] == "process" and f["--host"] == "127.0.0.1"
        config = dict(re.findall(r'([\w-]+)="([^"]*)"', f["--node-config"]))
        assert set(config) == NODE_CONFIG_KEYS
        assert config["dp-required"] == "true", f"{name} must ship a DP-required policy"
    else:
        assert {"--runtime-api-address", "--root-certificates", "--superexec-auth-secret-file"} <= set(f)
    if name == "fedneurogen-clientapp@.service":  # the gate on apps; the ledgers' folder is writable and is STATE_DIR
        assert args[1:3] == ["-m", "fedneurogen.client.site_exec"] and f["--allowed-apps"] == "${ALLOWED_APPS}"
        assert "/var/lib/fedneurogen/%i" in writable
        assert re.search(r"^STATE_DIR=/var/lib/fedneurogen/hospital-a$", env_text, re.M)
    if name == "fedneurogen-serverapp.service":
        assert "/var/lib/fedneurogen/runs" in writable


def test_site_units_share_the_runtime_port():
    node, app = (exec_start(read_unit(n)) for n in ("fedneurogen-supernode@.service", "fedneurogen-clientapp@.service"))
    assert flags(app[1:])["--runtime-api-address"] == "127.0.0.1:" + flags(node[1:])["--port"]
    assert flags(app[1:])["--superexec-auth-secret-file"] == flags(node[1:])["--superexec-auth-secret-file"]


# ---------------------------------------------------------------------------------------------
# README


def test_readme_config_keys_exist():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    keys: dict[str, set[str]] = {"--run-config": set(), "--node-config": set()}
    for block in blocks:
        for flag, quoted in re.findall(r"(--run-config|--node-config)\s+('[^']*'|\"[^\"]*\")", block):
            keys[flag] |= set(re.findall(r"(?:^|\s)([a-z][a-z0-9-]*)=", quoted[1:-1]))
    assert keys["--run-config"] and keys["--node-config"], "the README shows --run-config and --node-config"
    assert keys["--run-config"] <= RUN_CONFIG_KEYS, f"unknown run-config keys: {keys['--run-config'] - RUN_CONFIG_KEYS}"
    assert keys["--node-config"] <= NODE_CONFIG_KEYS, (
        f"unknown node-config keys: {keys['--node-config'] - NODE_CONFIG_KEYS}"
    )
    for key in ("dp-enabled", "dp-target-epsilon", "dp-delta", "dp-max-grad-norm", "dp-rounds", "resume", "run-dir"):
        assert key in keys["--run-config"], f"the README's runs do not show {key}"
    inline = set(re.findall(r"`([a-z][a-z0-9-]*)=[^`\s]*`", text))  # `strategy="krum"`, `trim-beta=0.34`, ...
    known = RUN_CONFIG_KEYS | NODE_CONFIG_KEYS | set(POLICY_KEYS)
    assert inline <= known, f"unknown keys in the README's prose: {inline - known}"
    for block in blocks:
        assert "--insecure" not in block


def test_readme_names_real_files_and_strategies():
    text = README.read_text(encoding="utf-8")
    runtime = {p.split("/")[0] for p in [*RUNTIME_FILES, *RUNTIME_DIRS]}
    for path in re.findall(r"deploy/(?:docker|systemd|scripts)/[\w.@-]+(?![\w.@{-])", text):  # not brace expansions
        made = path.startswith("deploy/docker/") and path.split("/")[2] in runtime
        assert (ROOT / path).exists() or made, f"README names {path}, which does not exist"
    strategies = set(re.findall(r'strategy="(\w+)"', text))
    assert {"fedmedian", "fedtrimmedavg", "krum"} <= strategies
    # STRATEGIES of server/strategy.py, read without importing torch (keeps this file fast)
    tree = ast.parse((ROOT / "server" / "strategy.py").read_text(encoding="utf-8"))
    (known,) = [
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "STRATEGIES" for t in n.targets)
    ]
    assert strategies <= set(known)
