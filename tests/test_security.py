"""Security on Flower's real deployment engine: authenticated nodes, what leaves a site, SecAgg+.

Real SuperLink and SuperNode processes on 127.0.0.1, TLS and SuperNode authentication on. The wire
tests pass the nodes' connections through a relay (tests/wiretap.py) that holds the SuperLink's
certificate, so they read the very bytes a site sends inside TLS.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from fedgenome.client.egress import ALLOWED, EGRESS_LOG
from fedgenome.client.node import JOURNAL
from fedgenome.client.worker import Options, Worker
from fedgenome.configs.schema import load_preset
from fedgenome.experiments.localfed import LocalFederation
from fedgenome.shared import tokenizer, wire
from fedgenome.shared.checkpoint import load_checkpoint
from fedgenome.shared.datasets import open_site
from fedgenome.shared.fetch import DataPaths
from fedgenome.shared.model import GenomeLM
from tests.test_federation import run_config
from tests.wiretap import KMER, WireTap, nucleotide_runs

pytestmark = pytest.mark.integration
UNREGISTERED_EXIT = 305  # Flower's exit code (logged) for "Failed to activate SuperNode"


def outbox(site: Path) -> dict[str, np.ndarray]:
    """The one update a site kept (``keep-updates``), as float32."""
    (path,) = sorted((site / "state" / "outbox").glob("*.npz"))
    with np.load(path) as data:
        return {k: data[k].astype(np.float32) for k in data.files}


def haplotype_windows(site: Path, count: int = 4) -> list[np.ndarray]:
    """Real windows of the site's patients' haplotypes, as token ids."""
    data = open_site(site, load_preset("tiny").data, seed=1, cache_dir=site / "state")
    return [data.dataset.sample(i).tokens for i in range(count)]


@pytest.mark.data
def test_unregistered_supernode_is_refused(site_copy: Callable[[str], Path],
                                           tmp_path: Path) -> None:
    member, stranger = site_copy("hospital-ceu"), site_copy("hospital-tsi")
    with LocalFederation(tmp_path / "fed", [member]) as federation:
        federation.site_key(stranger)  # a well-formed key pair the SuperLink never registered
        federation.start_node(stranger)
        proc = federation.group.procs[f"supernode-{stranger.name}"]
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the SuperLink let an unregistered SuperNode stay connected")
        assert code != 0
        assert federation.group.procs[f"supernode-{member.name}"].poll() is None  # still in
    log = (tmp_path / "fed" / "logs" / f"supernode-{stranger.name}.log").read_text()
    assert f"Exit Code: {UNREGISTERED_EXIT}" in log and "Failed to activate SuperNode" in log


@pytest.mark.data
def test_nothing_but_allow_listed_updates_leaves_a_site(
        site_copy: Callable[[str], Path], data_paths: DataPaths, tmp_path: Path) -> None:
    sites = [site_copy("hospital-ceu"), site_copy("hospital-tsi")]
    with WireTap() as tap, LocalFederation(tmp_path / "fed", sites,
                                           keep_updates=True, relay=tap.start) as federation:
        run_id = federation.submit(run_config(data_paths, tmp_path / "run",
                                              **{"num-server-rounds": 1}))
        assert federation.wait(run_id, timeout=900) == "finished:completed"
        sent = tap.sent()
    assert len(sent) > 200_000  # two float16 deltas of the tiny model went through the relay
    # The tap really holds the payload: each site's float16 delta is in it, byte for byte.
    for site in sites:
        delta = outbox(site)["embed.weight"].astype(np.float16).tobytes()
        assert delta[:256] in sent
    assert nucleotide_runs(sent) == []
    # The scanner finds a real patient window planted in the same bytes, in every encoding.
    for window in haplotype_windows(sites[0]):
        letters = tokenizer.decode(window).encode()
        for planted in (letters, window.astype(np.uint8).tobytes(), window.astype(np.int64).tobytes()):
            assert nucleotide_runs(sent[:5000] + planted + sent[5000:]), planted[:KMER]
    # Every message that left holds only allow-listed records and keys.
    for site in sites:
        lines = [json.loads(x) for x in (site / "state" / EGRESS_LOG).read_text().splitlines()]
        assert len(lines) == 1
        for line in lines:
            assert set(line["records"]) <= {wire.METRICS, wire.SITE_RECORD, wire.ARRAYS}
            assert set(line["records"][wire.METRICS]) <= wire.ALLOWED_METRICS
            assert set(line["records"][wire.SITE_RECORD]) == wire.SITE_KEYS  # its name and signed ledger head
            assert set(line["records"]) <= set(ALLOWED)


@pytest.mark.data
def test_secure_aggregation_equals_fedavg_and_hides_each_update(
        site_copy: Callable[[str], Path], data_paths: DataPaths, tmp_path: Path) -> None:
    sites = [site_copy("hospital-ceu"), site_copy("hospital-tsi"), site_copy("hospital-gbr-fin")]
    run_dir = tmp_path / "run"
    config = run_config(data_paths, run_dir, **{"num-server-rounds": 1, "aggregation": "secagg+",
                                              "min-nodes": 3})
    with WireTap() as tap, LocalFederation(tmp_path / "fed", sites,
                                           keep_updates=True, relay=tap.start) as federation:
        run_id = federation.submit(config)
        assert federation.wait(run_id, timeout=900) == "finished:completed"
        sent = tap.sent()
        workers = {site.name: federation.nodes[site.name].worker_pid for site in sites}
    report = json.loads((run_dir / "report.json").read_text())["rounds"][0]
    assert report["trained"] == sorted(s.name for s in sites)
    for site in sites:  # SecAgg+'s four stages, served by the site's one long-lived worker
        tasks = [json.loads(x) for x in (site / "state" / JOURNAL).read_text().splitlines()]
        assert [(t["round"], t["status"]) for t in tasks] == [("1", "completed")] * 4
        assert {t["pid"] for t in tasks} == {workers[site.name]}
    # The global model moved by the example-weighted mean of the sites' deltas (what FedAvg does),
    # up to SecAgg+'s quantisation: clip range 1, 2^22 levels, scaled by weight/max-weight.
    torch.manual_seed(0)
    initial = wire.state_to_arrays(GenomeLM(load_preset("tiny").model).state_dict())
    final = wire.state_to_arrays(load_checkpoint(run_dir / "checkpoints" / "round-0001").model.state_dict())
    weights = {s.name: wire.bucket(len(open_site(s, load_preset("tiny").data, seed=0,
                                                 cache_dir=s / "state").dataset)) for s in sites}
    deltas = {s.name: outbox(s) for s in sites}
    total = sum(weights.values())
    step = 2 * 1.0 / 2**22 * 1000 / min(weights.values())  # one quantisation level, unscaled
    for name in initial:
        fedavg = sum(weights[s] * deltas[s][name] for s in deltas) / total
        moved = final[name] - initial[name]
        np.testing.assert_allclose(moved, fedavg, atol=4 * step, rtol=0)
        assert np.abs(fedavg).max() > 100 * step  # the comparison is not trivially small
    # No site's update crossed the wire: not as float16 (what plain mode sends), not as float32.
    for delta in deltas.values():
        array = delta["embed.weight"]
        for form in (array.astype(np.float16).tobytes(), array.astype(np.float32).tobytes()):
            assert form[:64] not in sent and form[-64:] not in sent
    assert nucleotide_runs(sent) == []


@pytest.mark.data
def test_the_local_runtime_api_serves_only_tls_clients_with_the_secret(
        site_copy: Callable[[str], Path], tmp_path: Path) -> None:
    site = site_copy("hospital-ceu")
    with LocalFederation(tmp_path / "fed", [site]) as federation:
        assert federation.tls is not None
        node = federation.nodes[site.name]
        address = f"127.0.0.1:{node.spec.port}"
        ca, secret = node.runtime.tls.ca_cert, node.runtime.secret
        signed = Worker(Options(address, ca, secret, journal=None))
        deadline = time.monotonic() + 120
        while True:  # until the SuperNode's Runtime API is up
            try:
                assert signed.acquire() is None  # answered (there is no run, so no task)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        with pytest.raises(httpx.HTTPStatusError):  # TLS, but no HMAC with the node's secret
            Worker(Options(address, ca, None, journal=None)).acquire()
        stranger = tmp_path / "stranger.secret"
        stranger.write_bytes(b"not the node's secret")
        with pytest.raises(httpx.HTTPStatusError):
            Worker(Options(address, ca, stranger, journal=None)).acquire()
        with pytest.raises(httpx.TransportError):  # plaintext is not served at all
            Worker(Options(address, None, secret, journal=None)).acquire()
        with pytest.raises(httpx.TransportError):  # nor a certificate of another CA (the SuperLink's)
            Worker(Options(address, federation.tls.ca_cert, secret, journal=None)).acquire()
        assert federation.group.running(node.worker)  # the site's own worker is still serving
