"""A hospital checks its SuperLink; the operator registers, lists and revokes sites there (a real
SuperLink on 127.0.0.1, TLS, node authentication)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedgenome.experiments.localfed import LocalFederation
from fedgenome.server import pki
from fedgenome.server.nodes import recorded_nodes
from tests.helpers import assert_one_line_error, run_cli
from tests.test_pki import make_site

pytestmark = pytest.mark.integration


def test_a_site_registered_is_listed_by_name_and_an_unregistered_one_is_gone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalFederation(tmp_path / "fed", []) as federation:  # the SuperLink, with node auth on
        assert federation.pki is not None
        root = federation.pki.root
        site = make_site(tmp_path)
        pki.add_site(root, "hospital-a", site_dir=site)
        check = ["client", "check", "--superlink", f"127.0.0.1:{federation.port}", "--root-certificates",
                 str(federation.pki.ca_cert), "--site", str(site), "--json"]
        code, out, err = run_cli(check, capsys)  # the hospital's preflight against a real SuperLink
        checks = json.loads(out)["checks"]
        assert code == 4 and [c["name"] for c in checks] == [
            "address", "root certificate", "reachable", "TLS", "site key", "key registered"]
        assert [c["ok"] for c in checks] == [True] * 5 + [False], checks
        assert "has not registered key" in checks[-1]["detail"] and "register-site" in checks[-1]["fix"]
        at = ["--pki", str(root), "--superlink", f"127.0.0.1:{federation.port}",
              "--flwr-home", str(tmp_path / "operator")]
        code, out, err = run_cli(["server", "register-site", "hospital-a", *at], capsys)
        assert code == 0, err
        node_id = recorded_nodes(federation.pki.registry)["hospital-a"].node_id
        assert f"as node {node_id}" in out
        code, out, err = run_cli(check, capsys)
        assert code == 0 and json.loads(out)["checks"][-1]["ok"], out + err
        code, out, err = run_cli(["server", "list-sites", *at, "--json"], capsys)
        assert code == 0, err
        [row] = json.loads(out)["sites"]
        assert (row["site"], row["node-id"], row["status"]) == ("hospital-a", node_id, "registered")
        code, out, err = run_cli(["server", "unregister-site", "hospital-a", *at], capsys)
        assert code == 0, err
        assert f"site hospital-a (node {node_id}) unregistered" in out
        [row] = json.loads(run_cli(["server", "list-sites", *at, "--json"], capsys)[1])["sites"]
        assert (row["node-id"], row["status"]) == (node_id, "unregistered")
        assert recorded_nodes(federation.pki.registry) == {}
        code, out, _ = run_cli(check, capsys)
        assert code == 4 and not json.loads(out)["checks"][-1]["ok"]  # revoked: no longer known
        code, _, err = run_cli(["server", "unregister-site", "hospital-a", *at], capsys)
        assert_one_line_error(code, err, "site hospital-a: no SuperLink registration recorded",
                              "--node-id")
