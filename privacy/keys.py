"""A site's ECDSA key: the key its SuperNode authenticates with and that signs its privacy ledger.

Keys are ECDSA on SECP384R1 in OpenSSH format, as Flower's SuperNode authentication takes them:
``flwr supernode register KEY.pub`` on the operator's side and
``flower-supernode --auth-supernode-private-key KEY`` on the site's side. ``ssh-keygen -t ecdsa -b 384
-N "" -f KEY`` makes an equivalent pair.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedgenome.configs.errors import ConfigError, InputFileError
from fedgenome.shared.atomic import atomic_path

logger = logging.getLogger(__name__)

CURVE = ec.SECP384R1
"""The curve of the keys this module creates (``ecdsa-sha2-nistp384`` in OpenSSH terms)."""

_SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA384())
_CREATE_HINT = ('create one with fedgenome.privacy.keys.create_site_key or '
                '`ssh-keygen -t ecdsa -b 384 -N "" -f KEY`')


def create_site_key(directory: Path, name: str, *, comment: str | None = None) -> Path:
    """Create a new SECP384R1 key pair ``directory/name`` (private) and ``directory/name.pub`` (public).

    The private key is written in OpenSSH format without encryption, with mode 0600, atomically.
    The public key is one OpenSSH line, ``ecdsa-sha2-nistp384 AAAA... name``.

    Args:
        directory: Where to write the pair (created if missing).
        name: The key's file name, also the public key's comment (usually the site name).
        comment: The public key's comment, when it differs from ``name``.

    Returns:
        The private key's path.

    Raises:
        ConfigError: ``name`` is not a plain file name, or either file already exists (a site's key
            is never replaced silently: its ledger is signed with it and the SuperLink knows it).
    """
    check_key_name(name)
    private_path = directory / name
    public_path = directory / f"{name}.pub"
    for path in (private_path, public_path):
        _refuse_existing(path)
    key = generate_key()
    write_private_key(private_path, key)
    write_public_key(public_path, key.public_key(), comment=comment or name)
    logger.info("created site key %s (fingerprint %s)", private_path, fingerprint(key.public_key()))
    return private_path


def check_key_name(name: str) -> None:
    """Refuse a key (or site) name that is not a plain file name without spaces.

    Raises:
        ConfigError: Naming the value and what a valid name looks like.
    """
    if not name or name in {".", ".."} or "/" in name or os.sep in name or any(c.isspace() for c in name):
        raise ConfigError(f"key name {name!r} is invalid: use a plain file name without spaces or slashes")


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new private key on :data:`CURVE`."""
    return ec.generate_private_key(CURVE())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` in unencrypted OpenSSH format with mode 0600 (set before any byte is written).

    Raises:
        ConfigError: ``path`` already exists (private keys are never overwritten).
    """
    _refuse_existing(path)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_bytes(data)


def write_public_key(path: Path, public_key: ec.EllipticCurvePublicKey, *, comment: str) -> None:
    """Write ``public_key`` as one OpenSSH line with ``comment``, atomically (replacing ``path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"{public_key_text(public_key)} {comment}\n", encoding="ascii")


def public_key_text(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's OpenSSH form without a comment: ``ecdsa-sha2-nistp384 AAAA...``."""
    raw = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode("ascii")


def public_key_from_text(text: str) -> ec.EllipticCurvePublicKey | None:
    """The key of a canonical :func:`public_key_text` line on :data:`CURVE`; None for anything else."""
    try:
        key = serialization.load_ssh_public_key(text.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError, binascii.Error, NotImplementedError):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, CURVE):
        return None
    return key if public_key_text(key) == text else None


def same_key(a: ec.EllipticCurvePublicKey, b: ec.EllipticCurvePublicKey) -> bool:
    """Whether two public keys are the same key."""
    return fingerprint(a) == fingerprint(b)


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted ECDSA private key in OpenSSH format (PEM/PKCS#8 is accepted too).

    A key file that group or others can access is loaded, with a warning.

    Raises:
        InputFileError: The file is missing, unreadable, encrypted, malformed or not an ECDSA key.
    """
    data = _read_key_file(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "private key %s has mode %o: group/others can access it; run `chmod 600 %s`",
            path, stat.S_IMODE(mode), path,
        )
    stripped = data.lstrip()
    openssh = stripped.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    if stripped.startswith((b"ecdsa-sha2-", b"ssh-", b"-----BEGIN PUBLIC KEY-----")):
        raise InputFileError(f"key file {path} holds a public key: pass the private key (without .pub)")
    if not openssh and not (stripped.startswith(b"-----BEGIN") and b"PRIVATE KEY-----" in stripped):
        raise InputFileError(f"key file {path} is not an OpenSSH or PEM private key; {_CREATE_HINT}")
    try:
        if openssh:
            key: object = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # raised when the key is encrypted
        raise InputFileError(
            f"key file {path} is encrypted: site keys must be unencrypted (protect them with mode 0600); "
            f"remove the passphrase with `ssh-keygen -p -N '' -f {path}`"
        ) from exc
    except (ValueError, UnsupportedAlgorithm, NotImplementedError) as exc:
        raise InputFileError(f"key file {path} is malformed ({_one_line(exc)}); {_CREATE_HINT}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputFileError(
            f"key file {path} holds a {type(key).__name__}, not an ECDSA key; {_CREATE_HINT}"
        )
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load an ECDSA public key: one OpenSSH line (``ecdsa-sha2-nistp384 AAAA... comment``) or PEM.

    Raises:
        InputFileError: The file is missing, unreadable, malformed or not an ECDSA public key.
    """
    data = _read_key_file(path).strip()
    if data.startswith(b"-----BEGIN") and b"PRIVATE KEY-----" in data:
        raise InputFileError(f"key file {path} holds a private key: pass the public key ({path.name}.pub)")
    try:
        if data.startswith(b"-----BEGIN"):
            key: object = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm, binascii.Error, NotImplementedError) as exc:
        raise InputFileError(
            f"key file {path} is not an OpenSSH or PEM public key ({_one_line(exc)}); "
            "pass the .pub file written beside the site's private key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InputFileError(f"key file {path} holds a {type(key).__name__}, not an ECDSA public key")
    return key


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with ECDSA and SHA-384; returns the DER-encoded signature."""
    return key.sign(data, _SIGNATURE_ALGORITHM)


def verify_signature(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (DER, as :func:`sign` makes it) is ``public_key``'s signature of ``data``."""
    try:
        public_key.verify(signature, data, _SIGNATURE_ALGORITHM)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the key's OpenSSH public bytes (``ecdsa-sha2-nistp384 AAAA...``, no comment)."""
    raw = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return hashlib.sha256(raw).hexdigest()


def _refuse_existing(path: Path) -> None:
    """ConfigError when a key file is already there: site keys are never replaced silently."""
    if path.exists() or path.is_symlink():
        raise ConfigError(
            f"key file {path} already exists: refusing to overwrite a site key; "
            "use it as it is, or move it away first"
        )


def _read_key_file(path: Path) -> bytes:
    """The bytes of a key file, or InputFileError naming the path and the fix."""
    if not path.exists():
        raise InputFileError(f"key file {path} does not exist; {_CREATE_HINT}")
    if not path.is_file():
        raise InputFileError(f"key file {path} is not a regular file; pass the key file itself")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputFileError(
            f"key file {path} cannot be read ({exc.strerror}); check its owner and permissions"
        ) from exc


def _one_line(exc: BaseException) -> str:
    """An exception's message collapsed onto one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
