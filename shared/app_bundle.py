"""The Flower app bundle (FAB) that fedgenome submits, and the content digest a hospital pins.

``flower_app/pyproject.toml`` is the whole app: the components (``fedgenome.server.app:app``,
``fedgenome.client.app:app``) and the run config's defaults. Its bundle therefore holds that one
file, and a bundle whose content equals the one built from the installed fedgenome runs exactly the
ClientApp the hospital installed. A bundle is named by its **content digest**: SHA-256 over the
sorted lines ``path sha256-of-file``, Flower's own ``.info/`` entries (manifest, signatures) left
out, so the digest depends on the files only, not on the zip or on the Flower version that built
it.

>>> files = {"a.py": b"1", "pyproject.toml": b"2"}
>>> content_digest(files) == content_digest(dict(reversed(files.items())))
True
>>> content_digest({"pyproject.toml": b"2"}) == content_digest({"pyproject.toml": b"2 "})
False
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from fedgenome.configs.errors import ConfigError, UntrustedBundleError

APP_DIR = Path(__file__).resolve().parent / "flower_app"
"""The Flower app every run submits (``flwr run APP_DIR``)."""
FLOWER_METADATA = ".info/"  # Flower's manifest and signatures inside a bundle
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def content_digest(files: Mapping[str, bytes]) -> str:
    """``sha256:HEX`` of the files (path and SHA-256 of each, in path order)."""
    lines = "".join(f"{path} {hashlib.sha256(data).hexdigest()}\n" for path, data in sorted(files.items()))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def bundle_files(content: bytes) -> dict[str, bytes]:
    """The files of a bundle (a zip), Flower's ``.info/`` entries left out.

    Raises:
        UntrustedBundleError: The bytes are not a readable zip archive.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            return {i.filename: fab.read(i) for i in fab.infolist()
                    if not i.is_dir() and not i.filename.startswith(FLOWER_METADATA)}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UntrustedBundleError(f"the app bundle is not a readable zip archive ({exc})") from None


def bundle_digest(content: bytes) -> str:
    """The content digest of a bundle's bytes."""
    return content_digest(bundle_files(content))


@cache
def installed_digest() -> str:
    """The content digest of the bundle that the installed fedgenome builds and submits."""
    from flwr.cli.build import build_fab_from_disk

    return bundle_digest(build_fab_from_disk(APP_DIR))


def parse_digest(value: str) -> str:
    """``sha256:HEX`` from ``sha256:HEX`` or a bare 64-digit hex digest (what ``client trust`` prints).

    Raises:
        ConfigError: Not such a digest.
    """
    match = _DIGEST.fullmatch(value.strip().lower())
    if match is None:
        raise ConfigError(f"--trust {value!r}: not a bundle digest; give 'sha256:' and 64 hex digits, as "
                          "'fedgenome client trust' prints it for a fedgenome install")
    return "sha256:" + match.group(1)
