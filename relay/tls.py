"""TLS for the relay's listeners: one modern server policy, certificates re-read on SIGHUP.

A renewed certificate takes effect without a restart: ``ReloadableCert.reload`` loads the files
into the same ``ssl.SSLContext`` the listening socket uses, so every new handshake presents the
new certificate while connections already open keep theirs. The files are first loaded into a
throwaway context: a half-written renewal or a key that does not match leaves the old one serving.
"""

from __future__ import annotations

import logging
import ssl

from relay.errors import ConfigError

logger = logging.getLogger(__name__)

# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only. TLS 1.3's suites are all AEAD with forward
# secrecy and are chosen by OpenSSL itself.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert: str, key: str, setting: str) -> ssl.SSLContext:
    """A server context with the relay's policy and ``cert``/``key`` loaded; ConfigError naming
    ``setting`` (e.g. RELAY_HTTP_TLS_CERT) when the files cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_SINGLE_ECDH_USE)
    _load(ctx, cert, key, setting)
    return ctx


def _load(ctx: ssl.SSLContext, cert: str, key: str, setting: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{setting}: cannot load certificate {cert!r} with its key: {_reason(exc)}"]) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def read_pem(path: str, setting: str) -> bytes:
    """The bytes of a PEM file; ConfigError naming ``setting`` when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError([f"{setting}: cannot read {path!r}: {_reason(exc)}"]) from None
    if b"-----BEGIN " not in data:
        raise ConfigError([f"{setting}: {path!r} holds no PEM block"])
    return data


def probe_cert(cert: str, key: str, setting: str) -> None:
    """Check that ``cert`` and ``key`` load and match (ConfigError naming ``setting`` if not)."""
    _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, setting)


class ReloadableCert:
    """A listener's server context whose certificate ``reload`` re-reads from the same paths."""

    def __init__(self, name: str, cert: str, key: str, setting: str) -> None:
        self.name, self.cert, self.key, self.setting = name, cert, key, setting
        self.context = server_context(cert, key, setting)

    def reload(self) -> bool:
        """Load the files again (SIGHUP); on failure log it and keep serving the old certificate."""
        try:
            probe_cert(self.cert, self.key, self.setting)  # a bad renewal must not half-replace the old pair
            _load(self.context, self.cert, self.key, self.setting)
        except ConfigError as err:
            logger.warning("tls_reload_failed", extra={"listener": self.name, "error": err.problems[0]})
            return False
        logger.info("tls_reloaded", extra={"listener": self.name, "cert": self.cert})
        return True
