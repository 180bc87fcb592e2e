"""A node speaks only for the site its key was registered under, whatever the order of replies."""

from __future__ import annotations

import pytest

from fedgenome.server.identity import NodeIdentity, _fingerprint, check_claim
from fedgenome.server.replies import collect
from tests.test_validation import GLOBAL, honest, reply

CEU, IMPOSTOR = NodeIdentity(11, "hospital-ceu", "a1" * 32), NodeIdentity(12, "impostor", "b2" * 32)
IDENTITIES = {11: CEU, 12: IMPOSTOR}


@pytest.mark.parametrize("order", [(12, 11), (11, 12)])
def test_an_impostor_never_counts_under_another_sites_name(order: tuple[int, int]) -> None:
    names: dict[int, str] = {}
    for _ in range(2):  # the binding holds in later rounds too
        replies = [reply(node, "hospital-ceu", honest()) for node in order]
        got = collect(replies, [11, 12], names, GLOBAL, max_norm=10.0, identities=IDENTITIES)
        assert [m.metadata.src_node_id for m in got.trained] == [11]
        assert set(got.epsilon) == {"hospital-ceu"} and set(got.norms) == {"hospital-ceu"}
        assert list(got.rejected) == ["impostor"]  # listed under its own registered name
        assert "node 12 (key b2b2b2b2b2b2b2b2, registered as 'impostor') claims to be site " \
               "'hospital-ceu'" in got.rejected["impostor"]
        assert [(c.node_id, c.fingerprint, c.claimed) for c in got.claims] == [
            (12, IMPOSTOR.fingerprint, "hospital-ceu")]
        assert names == {11: "hospital-ceu"}  # the claim was never recorded


def test_an_authenticated_node_registered_without_a_name_speaks_for_no_site() -> None:
    nameless = {13: NodeIdentity(13, None, "c3" * 32)}
    got = collect([reply(13, "hospital-tsi", honest())], [13], {}, GLOBAL, max_norm=10.0,
                  identities=nameless)
    assert got.trained == [] and got.epsilon == {}
    assert "register its key with 'fedgenome server register-site hospital-tsi'" in got.rejected["node 13"]


def test_a_silent_registered_node_is_reported_failed_under_its_registered_name() -> None:
    got = collect([reply(11, "hospital-ceu", honest())], [11, 12], {}, GLOBAL, max_norm=10.0,
                  identities=IDENTITIES)
    assert got.failed == ["impostor"]


def test_without_authentication_a_node_keeps_the_first_name_it_gave() -> None:
    names: dict[int, str] = {}
    collect([reply(21, "hospital-ceu", honest())], [21], names, GLOBAL, max_norm=10.0)
    assert names == {21: "hospital-ceu"}
    got = collect([reply(22, "hospital-ceu", honest()), reply(21, "hospital-tsi", honest())],
                  [21, 22], names, GLOBAL, max_norm=10.0)
    assert got.trained == [] and got.epsilon == {}
    assert "which is another node" in got.rejected["node 22"]
    assert "site 'hospital-ceu' until now, claims to be site 'hospital-tsi'" in got.rejected["hospital-ceu"]
    assert names == {21: "hospital-ceu"}


def test_one_site_counts_once_per_round() -> None:
    taken = {"hospital-ceu"}
    claim = check_claim(11, "hospital-ceu", identities=IDENTITIES, bound={}, taken=taken)
    assert claim.site is None and "already answered this round" in str(claim.problem)


def test_the_fingerprint_of_flowers_stored_key_is_the_sites_own(tmp_path: pytest.TempPathFactory) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedgenome.privacy.keys import fingerprint

    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert _fingerprint(pem) == fingerprint(key)
    assert _fingerprint(b"") is None


def test_an_error_the_superlink_made_for_a_silent_node_names_that_node_once() -> None:
    from flwr.app import Error
    from flwr.app import Message as FlowerMessage
    from flwr.common.constant import SUPERLINK_NODE_ID

    from tests.test_validation import instruction

    lost = FlowerMessage(Error(code=0, reason="the node went offline"), reply_to=instruction(12))
    lost.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # as the SuperLink sends it
    got = collect([reply(11, "hospital-ceu", honest()), lost], [11, 12], {}, GLOBAL, max_norm=10.0,
                  identities=IDENTITIES)
    assert got.failed == ["impostor"]  # the sampled node 12, under its name; no 'node 1'


def test_the_superlinks_registration_must_agree_with_the_pki_registry() -> None:
    registry = {"hospital-ceu": CEU.fingerprint or "", "impostor": "d4" * 32}
    assert check_claim(11, "hospital-ceu", identities=IDENTITIES, bound={}, taken=set(),
                       registry=registry).site == "hospital-ceu"
    swapped = check_claim(12, "impostor", identities=IDENTITIES, bound={}, taken=set(), registry=registry)
    assert swapped.site is None and "has another key in the consortium's PKI registry" in str(swapped.problem)
    missing = check_claim(11, "hospital-ceu", identities=IDENTITIES, bound={}, taken=set(), registry={})
    assert missing.site is None and "is not in the consortium's PKI registry" in str(missing.problem)
