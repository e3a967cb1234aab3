"""The SuperLink's TLS files: where they lie and the flags Flower's processes take them with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedneurogen.shared.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS certificate and key, and the CA certificate that signed it.

    Attributes
    ----------
    certificate : Path
        The SuperLink's certificate (PEM), whose names list every address sites dial.
    private_key : Path
        Its private key (PEM, mode 0600).
    ca_certificate : Path
        The consortium CA's certificate, which sites and the proxy check the SuperLink's with.
    """

    certificate: Path
    private_key: Path
    ca_certificate: Path

    @classmethod
    def in_folder(cls, folder: str | Path, name: str = "superlink") -> "TlsFiles":
        """The files ``fedneurogen certs ca/server`` write: ``name.crt``, ``name.key``, ``ca.crt``.

        Parameters
        ----------
        folder : str or Path
            The folder holding them.
        name : str
            The stem of the certificate and key files.
        """
        folder = Path(folder)
        return cls(folder / f"{name}.crt", folder / f"{name}.key", folder / "ca.crt")

    def flags(self) -> list[str]:
        """``flower-superlink``'s TLS flags; a ``ConfigError`` names a missing file."""
        for path in (self.certificate, self.private_key, self.ca_certificate):
            if not Path(path).is_file():
                raise ConfigError(f"TLS file {path} not found (create it with `fedneurogen certs`)")
        return [
            "--ssl-certfile",
            str(self.certificate),
            "--ssl-keyfile",
            str(self.private_key),
            "--ssl-ca-certfile",
            str(self.ca_certificate),
        ]
