"""``fedgenome client check``: each way a node cannot reach or trust its SuperLink, named with its fix."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedgenome.client.preflight import check_superlink
from fedgenome.shared.tls import TlsFiles, make_certificates
from tests.helpers import run_cli


def _serve_tls(listener: socket.socket, files: TlsFiles) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # the listener was closed: the test is over
            return
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            conn.close()


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server on 127.0.0.1 whose certificate names example.org only: (port, its CA)."""
    files = make_certificates(tmp_path / "elsewhere", hosts=("example.org", "127.0.0.1"))
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=_serve_tls, args=(listener, files), daemon=True)
    thread.start()
    yield listener.getsockname()[1], files.ca_cert
    listener.close()
    thread.join(timeout=5)


def failed(checks: list) -> tuple[str, str, str]:  # type: ignore[type-arg]
    *passed, last = checks
    assert all(c.ok for c in passed) and not last.ok
    return last.name, last.detail, last.fix


def test_a_superlink_with_a_valid_certificate_for_the_host_passes(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    checks = check_superlink(f"127.0.0.1:{port}", root_certificates=ca)
    assert [c.name for c in checks] == ["address", "root certificate", "reachable", "TLS"]
    assert all(c.ok for c in checks)


def test_another_consortiums_ca_and_a_name_the_certificate_lacks_fail_with_their_fixes(
        tls_server: tuple[int, Path], tmp_path: Path) -> None:
    port, ca = tls_server
    other = make_certificates(tmp_path / "other", hosts=("127.0.0.1",)).ca_cert
    name, _, fix = failed(check_superlink(f"127.0.0.1:{port}", root_certificates=other))
    assert name == "TLS" and "not signed by this root certificate" in fix
    name, detail, fix = failed(check_superlink(f"localhost:{port}", root_certificates=ca))
    assert name == "TLS" and "does not name this host" in fix and "localhost" in detail


def test_no_listener_a_bad_address_and_a_bad_root_certificate_fail(
        tls_server: tuple[int, Path], tmp_path: Path) -> None:
    _, ca = tls_server
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens here once the probe is closed
    name, _, fix = failed(check_superlink(f"127.0.0.1:{closed}", root_certificates=ca))
    assert name == "reachable" and "firewall" in fix
    assert failed(check_superlink("no-port-here", root_certificates=ca))[0] == "address"
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    assert failed(check_superlink("127.0.0.1:9092", root_certificates=junk))[0] == "root certificate"


def test_the_command_exits_4_and_says_json_when_asked(tls_server: tuple[int, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    port, ca = tls_server
    code, out, _ = run_cli(["client", "check", "--superlink", f"127.0.0.1:{port}",
                            "--root-certificates", str(ca), "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True
    other = make_certificates(tmp_path / "other", hosts=("127.0.0.1",)).ca_cert
    code, out, err = run_cli(["client", "check", "--superlink", f"127.0.0.1:{port}",
                              "--root-certificates", str(other)], capsys)
    assert code == 4 and "FAIL TLS:" in out and "fix: the SuperLink's certificate is not signed" in out
    assert err.strip() == "fedgenome: error: client check: TLS failed"
