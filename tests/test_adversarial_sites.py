"""Sites that lie, in a real deployment: TLS, authenticated SuperNodes, long-lived workers.

Four SuperNodes on 127.0.0.1: one honest hospital; one that reports epsilon 0 from round 2; one
that claims 1,000 patients (it declared 200); and an impostor, a node whose key is registered as
``impostor`` serving a copy of the honest hospital's site (its ``site.toml`` says
``hospital-ceu``). The lying sites run the real client with its reply patched after training, in
their own worker processes (a ``sitecustomize`` module on their ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fedgenome.experiments.localfed import CONNECTION, LocalFederation
from fedgenome.privacy.keys import fingerprint, load_public_key
from fedgenome.server.deploy import register_supernode, wait_online
from fedgenome.server.pki import add_site
from fedgenome.server.site_policy import declare_patients
from fedgenome.shared.fetch import DataPaths
from tests.test_federation import ledger_entries, run_config

pytestmark = pytest.mark.integration

ATTACK = '''
import importlib.abc
import os
import sys


def _patch(module):
    train = module.SiteNode.train_round
    attack = os.environ["FEDGENOME_TEST_ATTACK"]

    def attacked(self, *args, **kwargs):
        reply = train(self, *args, **kwargs)
        if attack == "epsilon" and kwargs.get("global_round", 1) >= 2:
            reply.metrics["epsilon"] = 0.0
        if attack == "examples":
            reply.metrics["num-examples"] = 1000
        return reply

    module.SiteNode.train_round = attacked


class _PatchSite(importlib.abc.MetaPathFinder):
    # The worker imports the app afresh from each run's bundle: patch every fedgenome.client.site it loads.
    def find_spec(self, name, path, target=None):
        if name != "fedgenome.client.site":
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                run = spec.loader.exec_module
                def exec_module(module, run=run):
                    run(module)
                    _patch(module)
                spec.loader.exec_module = exec_module
                return spec
        return None


if os.environ.get("FEDGENOME_TEST_ATTACK"):
    sys.meta_path.insert(0, _PatchSite())
'''


def attacker_env(tmp_path: Path, attack: str) -> dict[str, str]:
    patch = tmp_path / "attack"
    patch.mkdir(exist_ok=True)
    (patch / "sitecustomize.py").write_text(ATTACK)
    path = os.pathsep.join(filter(None, [str(patch), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FEDGENOME_TEST_ATTACK": attack}


@pytest.mark.data
def test_impostors_and_false_claims_are_rejected_and_never_recorded(
        site_copy: Callable[[str], Path], data_paths: DataPaths, tmp_path: Path) -> None:
    ceu, tsi, gbr = site_copy("hospital-ceu"), site_copy("hospital-tsi"), site_copy("hospital-gbr-fin")
    impostor = tmp_path / "impostor"
    shutil.copytree(ceu, impostor, ignore=shutil.ignore_patterns("keys", "state"))
    run_dir = tmp_path / "run"
    with LocalFederation(tmp_path / "fed", [ceu]) as federation:
        assert federation.pki is not None
        for site, attack in ((tsi, "epsilon"), (gbr, "examples")):
            federation.register(site)
            federation.start_node(site, env=attacker_env(tmp_path, attack))
        declare_patients(federation.pki.root, "hospital-gbr-fin", 200)
        key = add_site(federation.pki.root, "impostor").private_path  # its own, registered key
        impostor_node = register_supernode(federation.pki.site_public("impostor"), CONNECTION,
                                           flwr_home=federation.flwr_home, name="impostor")
        federation.start_node(impostor, key=key)
        wait_online(4, CONNECTION, flwr_home=federation.flwr_home)
        run_id = federation.submit(run_config(data_paths, run_dir, **{"num-server-rounds": 2,
                                                                     "min-nodes": 4}))
        assert federation.wait(run_id, timeout=900) == "finished:completed"
    rounds = json.loads((run_dir / "report.json").read_text())["rounds"]
    honest = ledger_entries(ceu)
    impostor_key = fingerprint(load_public_key(key.with_suffix(".pub")))
    for record, entry in zip(rounds, honest, strict=True):
        assert record["epsilon"]["hospital-ceu"] == pytest.approx(entry.epsilon)  # the real one's
        assert "claims to be site 'hospital-ceu'" in record["rejected"]["impostor"]
        assert [(c["node"], c["key_fingerprint"], c["claimed"]) for c in record["claims"]] == [
            (impostor_node, impostor_key, "hospital-ceu")]
        assert "above the 200 patients site hospital-gbr-fin declared" in \
            record["rejected"]["hospital-gbr-fin"]
        assert "hospital-gbr-fin" not in record["epsilon"]
    assert rounds[0]["trained"] == ["hospital-ceu", "hospital-tsi"]
    assert rounds[1]["trained"] == ["hospital-ceu"]
    assert "is below" in rounds[1]["rejected"]["hospital-tsi"]
    assert rounds[1]["epsilon"].get("hospital-tsi") != 0.0
