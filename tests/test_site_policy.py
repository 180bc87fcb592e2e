"""A site may claim at most the patients it declared in the consortium's PKI registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgenome.configs.errors import ConfigError
from fedgenome.server.pki import add_site, init_pki
from fedgenome.server.replies import collect
from fedgenome.server.site_policy import declare_patients, declared_examples, policy_path, registered_keys
from tests.test_validation import GLOBAL, honest, reply


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    init_pki(root, hosts=("localhost",), days=2)
    for name in ("small", "large"):
        add_site(root, name)
    return root


def test_declared_counts_are_bucketed_and_bound_each_sites_claim(pki: Path) -> None:
    declare_patients(pki, "small", 61)
    declare_patients(pki, "large", 240)
    assert declared_examples(pki) == {"small": 50, "large": 250}
    replies = [reply(11, "small", honest()), reply(12, "large", honest())]  # both claim 100
    got = collect(replies, [11, 12], {}, GLOBAL, max_norm=10.0, declared=declared_examples(pki))
    assert [m.metadata.src_node_id for m in got.trained] == [12]
    assert got.rejected == {"small": "example count 100 is above the 50 patients site small declared "
                                     "in the consortium's PKI registry"}


def test_a_site_without_a_declaration_is_bound_by_max_examples_only(pki: Path) -> None:
    got = collect([reply(11, "small", honest())], [11], {}, GLOBAL, max_norm=10.0,
                  declared=declared_examples(pki))
    assert len(got.trained) == 1


def test_declaring_for_an_unregistered_site_or_a_bad_count_is_refused(pki: Path) -> None:
    with pytest.raises(ConfigError, match="site other is not registered"):
        declare_patients(pki, "other", 10)
    with pytest.raises(ConfigError, match="give the site's patient count"):
        declare_patients(pki, "small", 0)
    policy_path(pki, "small").write_text("patients = true\n")
    with pytest.raises(ConfigError, match="is not a patient count"):
        declared_examples(pki)


def test_the_registry_lists_each_sites_key_fingerprint(pki: Path) -> None:
    from fedgenome.privacy.keys import fingerprint, load_public_key

    keys = registered_keys(pki)
    assert set(keys) == {"small", "large"}
    assert keys["small"] == fingerprint(load_public_key(pki / "sites" / "small.pub"))
