"""Who wrote a checkpoint: Ed25519 signatures over its manifest, and the keys a user trusts.

A checkpoint's ``MANIFEST.sha256`` (``shared/manifest.py``) holds the SHA-256 of every file in
it; an unkeyed hash list says a file changed by accident, not who wrote it: anyone who edits a file can
rewrite its line. So the writer signs the manifest with its user's key (``MANIFEST.sha256.sig``
beside it: the signature and the signer's key id), and a loader accepts the checkpoint only when
the signer is the loading user or a key that user trusts.

    $FEDNEUROGEN_HOME/keys/            (default ~/.fedneurogen/keys; 0700)
        signing-key.pem                this user's Ed25519 private key (PKCS#8 PEM, 0600), made on first use
        trusted-keys/<key id>.pub      public keys this user trusts (PEM), e.g. the coordinator's

A coordinator hands its public key to the sites (``fedneurogen keys export``), and a site trusts
it once (``fedneurogen keys trust FILE``); from then on the checkpoints the coordinator's server
writes load there, and a checkpoint changed by anyone else is refused. A command told
``--trust-unsigned`` (``trusting_unsigned``) loads an unsigned or untrusted checkpoint with a
warning; its files are still checked against the manifest's hashes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import write_json_atomic, write_text_atomic

HOME_ENV = "FEDNEUROGEN_HOME"
PRIVATE_KEY_FILE = "signing-key.pem"
TRUSTED_DIR = "trusted-keys"
SIGNATURE_SUFFIX = ".sig"
SIGNATURE_FORMAT = "fedneurogen.manifest-signature"
#: Signed bytes start with this, so a manifest signature can never be taken for one over other data.
_DOMAIN = b"fedneurogen manifest signature v1\n"
#: How to load a checkpoint anyway: the commands that load one take this flag.
TRUST_HINT = "load it anyway with --trust-unsigned only if you trust where it came from"

_TRUST_UNSIGNED: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_unsigned", default=False)


class UntrustedSignature(ConfigError):
    """A checkpoint that is unsigned, signed by a key the user does not trust, or whose signature
    does not match its manifest.

    Parameters
    ----------
    folder : str | Path
        The checkpoint folder (kept as ``self.folder``).
    problem : str
        What is wrong, in words (kept as ``self.problem``).
    hint : str
        How to proceed.
    """

    def __init__(self, folder: str | Path, problem: str, hint: str = TRUST_HINT):
        self.folder = Path(folder)
        self.problem = problem
        super().__init__(f"checkpoint {self.folder} {problem}: {hint}")


class UntrustedCheckpointWarning(UserWarning):
    """An unsigned or untrusted checkpoint loaded because the command was told ``--trust-unsigned``."""


def key_dir() -> Path:
    """This user's key folder: ``$FEDNEUROGEN_HOME/keys``, else ``~/.fedneurogen/keys``.

    Returns
    -------
    Path
        The folder (not created).
    """
    home = os.environ.get(HOME_ENV, "").strip()
    return (Path(home).expanduser() if home else Path.home() / ".fedneurogen") / "keys"


def key_id(public_key: Ed25519PublicKey) -> str:
    """A public key's id: the first 16 hex digits of the SHA-256 of its 32 raw bytes.

    Parameters
    ----------
    public_key : Ed25519PublicKey
        The key.

    Returns
    -------
    str
        16 lower-case hex digits (a name to find the key by; trust rests on the signature check).
    """
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def own_key() -> Ed25519PrivateKey:
    """This user's signing key, made on first use.

    A new key is written 0600 under a 0700 ``key_dir()``, atomically and never over an existing
    one: of two processes making it at once, both end up with the one that was written first.

    Returns
    -------
    Ed25519PrivateKey
        The key.

    Raises
    ------
    ConfigError
        The key cannot be written or read (the message names the file and ``FEDNEUROGEN_HOME``).
    """
    path = key_dir() / PRIVATE_KEY_FILE
    if not path.is_file():
        try:
            _create_key(path)
        except OSError as err:
            raise ConfigError(
                f"cannot create the checkpoint signing key {path} ({err.strerror or err}): "
                f"set {HOME_ENV} to a folder this user can write"
            ) from err
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read the checkpoint signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"the checkpoint signing key {path} is not an Ed25519 key")
    return key


def _create_key(path: Path) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp = tempfile.mkstemp(prefix=".signing-key.", suffix=".tmp", dir=folder)  # 0600 from the start
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # atomic and never over an existing key (os.replace would be)
        except FileExistsError:
            pass  # another process made it first: its key is the one
    finally:
        os.unlink(tmp)


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    """A public key as PEM text (SubjectPublicKeyInfo, as ``openssl pkey -pubout`` writes it).

    Parameters
    ----------
    public_key : Ed25519PublicKey
        The key.

    Returns
    -------
    str
        The PEM text.
    """
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def read_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file.

    Parameters
    ----------
    path : str | Path
        The file (``fedneurogen keys export`` writes one).

    Returns
    -------
    Ed25519PublicKey
        The key.

    Raises
    ------
    ConfigError
        The file cannot be read or holds no Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{path}: not a readable public key ({err})") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key (the format `fedneurogen keys export` writes)")
    return key


def trust_key(path: str | Path) -> tuple[str, Path]:
    """Trust the public key in ``path``: checkpoints it signed load for this user.

    Parameters
    ----------
    path : str | Path
        A PEM public key file (another user's ``fedneurogen keys export``).

    Returns
    -------
    key_id : str
        The key's id.
    stored : Path
        Where it is kept (``key_dir()/trusted-keys/<key id>.pub``).

    Raises
    ------
    ConfigError
        ``path`` holds no Ed25519 public key.
    """
    key = read_public_key(path)
    ident = key_id(key)
    stored = key_dir() / TRUSTED_DIR / f"{ident}.pub"
    stored.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_text_atomic(stored, public_key_pem(key))
    return ident, stored


def known_keys() -> dict[str, list[Ed25519PublicKey]]:
    """The keys whose signatures this user accepts: its own (when it has one: loading makes no key)
    and the trusted ones.

    Returns
    -------
    dict of str to list of Ed25519PublicKey
        By key id.

    Raises
    ------
    ConfigError
        This user's key cannot be read, or a trusted key file is not a public key.
    """
    keys: dict[str, list[Ed25519PublicKey]] = {}
    if (key_dir() / PRIVATE_KEY_FILE).is_file():
        own = own_key().public_key()
        keys[key_id(own)] = [own]
    for file in sorted((key_dir() / TRUSTED_DIR).glob("*.pub")):
        key = read_public_key(file)
        keys.setdefault(key_id(key), []).append(key)
    return keys


def sign_manifest(manifest: Path) -> Path:
    """Sign the manifest file with this user's key; the signature goes beside it (``.sig``).

    Parameters
    ----------
    manifest : Path
        The manifest file.

    Returns
    -------
    Path
        The signature file: JSON with the format, the algorithm, the signer's key id and the
        base64 signature of the manifest's bytes.

    Raises
    ------
    ConfigError
        This user's key cannot be made or read.
    """
    key = own_key()
    record = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(_DOMAIN + Path(manifest).read_bytes())).decode(),
    }
    return write_json_atomic(signature_path(manifest), record)


def signature_path(manifest: Path) -> Path:
    """The signature file of a manifest.

    Parameters
    ----------
    manifest : Path
        The manifest file.

    Returns
    -------
    Path
        ``<manifest>.sig``.
    """
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + SIGNATURE_SUFFIX)


def check_signature(folder: Path, manifest: Path, data: bytes | None, trust_unsigned: bool | None = None) -> str | None:
    """Check that a manifest (of the checkpoint ``folder``) was signed by a key this user accepts.

    Parameters
    ----------
    folder : Path
        The checkpoint folder (named in messages).
    manifest : Path
        Its manifest file (its signature is beside it).
    data : bytes | None
        The manifest's bytes, as the caller read them to use them; None: there is no manifest
        (an unsigned checkpoint).
    trust_unsigned : bool | None
        Accept an unsigned or untrusted checkpoint with a warning instead of refusing it; None:
        as the running command says (``trusting_unsigned``).

    Returns
    -------
    str | None
        The signer's key id; None when the checkpoint was accepted unsigned or untrusted.

    Raises
    ------
    UntrustedSignature
        Unsigned, signed by an unknown key, or a signature that does not match the manifest
        (without ``trust_unsigned``).
    ConfigError
        This user's key cannot be read, or a trusted key file is not a public key.
    """
    if trust_unsigned is None:
        trust_unsigned = _TRUST_UNSIGNED.get()
    sig_file = signature_path(manifest)
    problem, signer = None, None
    if data is None:
        problem = f"has no {manifest.name} (written before checkpoints were signed, or not by FedNeuroGen)"
    elif not sig_file.is_file():
        problem = f"is not signed (no {sig_file.name} beside its {manifest.name})"
    else:
        try:
            record = json.loads(sig_file.read_text(encoding="utf-8"))
            ident = str(record["key_id"])
            signature = base64.b64decode(record["signature"], validate=True)
            if record.get("format") != SIGNATURE_FORMAT or record.get("algorithm") != "ed25519":
                raise ValueError("unknown format")
            if not re.fullmatch(r"[0-9a-f]{16}", ident):
                raise ValueError("not a key id")
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            record, problem = None, f"has an unreadable signature {sig_file.name}"
        keys = known_keys().get(ident) if record is not None else None
        if record is not None and not keys:
            problem = (
                f"is signed by key {ident}, which this user does not trust (if it is your coordinator's, "
                "trust its public key: `fedneurogen keys trust FILE`, the file from its `fedneurogen keys export`)"
            )
        elif keys and any(_verifies(key, signature, _DOMAIN + data) for key in keys):
            signer = ident
        elif keys:
            problem = f"has a signature that does not match its {manifest.name} (changed after it was signed)"
    if problem is None:
        return signer
    if not trust_unsigned:
        raise UntrustedSignature(folder, problem)
    warnings.warn(
        f"checkpoint {folder} {problem}: loaded because of --trust-unsigned"
        + (f" (its files are checked against {manifest.name})" if data is not None else ""),
        UntrustedCheckpointWarning,
        stacklevel=3,
    )
    return None


def _verifies(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@contextlib.contextmanager
def trusting_unsigned(enabled: bool = True) -> Iterator[None]:
    """Within the block, checkpoints load even when unsigned or untrusted (with a warning): what a
    command told ``--trust-unsigned`` does around its work.

    Parameters
    ----------
    enabled : bool
        False leaves the check as it is (so a command can pass its flag straight through).

    Yields
    ------
    None
    """
    token = _TRUST_UNSIGNED.set(bool(enabled) or _TRUST_UNSIGNED.get())
    try:
        yield
    finally:
        _TRUST_UNSIGNED.reset(token)
