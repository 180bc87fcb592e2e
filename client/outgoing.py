"""The last update a site sent, kept so that a round asked for again is answered without spending again.

::

    state/outgoing/last.npz    the float16 delta and, under a reserved name, its JSON record:
                               run key, global round, update_sha256 (the ledger entry's), metrics

A SuperLink killed mid-round and resumed asks the sites for the same (run key, global round)
again. A site whose ledger already has a trained entry for it re-sends this update: it was already
released, so sending it again is post-processing and costs no privacy. Training again would spend
a second time for the same round (:mod:`fedgenome.client.site`).

Crash windows (the order in :meth:`fedgenome.client.site.SiteNode.train_round`):

1. training: nothing kept, nothing recorded, nothing sent; a retry trains afresh;
2. the update is written here (atomically: temp file, fsync, rename) *before* the ledger entry; a
   crash now leaves an update that no entry covers: a retry finds no entry, trains afresh and
   replaces it (that update never left the site);
3. the entry is appended and fsynced; from now on the round is spent, and whatever happens to the
   reply (a crash before the head is rewritten, before or while sending, a server that dies), a
   retry finds the entry and re-sends this file, byte for byte;
4. a file that is missing, unreadable, or is not the entry's update (other run, round or digest)
   is never sent: the site refuses the round instead.

Only the last update is kept (one file per site): a resumed server asks again for the round it was
in, the site's last.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedgenome.privacy.ledger.marker import OUTGOING
from fedgenome.shared.atomic import atomic_path

log = logging.getLogger(__name__)
FORMAT = "fedgenome-outgoing/1"
_RECORD = "__fedgenome_outgoing__"
"""The npz member holding the JSON record (model arrays are named like ``blocks.0.attn.weight``)."""

Delta = dict[str, npt.NDArray[np.float16]]


@dataclass(frozen=True)
class Outgoing:
    """An update as it was sent, with the (run key, round) it served and its ledger digest."""

    run_key: str
    round: int
    update_sha256: str
    """The ``update_sha256`` of the ledger entry that covers it."""
    metrics: dict[str, float | int]
    delta: Delta


def outgoing_path(state_dir: Path) -> Path:
    """Where the last update is kept: ``state/outgoing/last.npz``."""
    return state_dir / OUTGOING / "last.npz"


def keep_outgoing(state_dir: Path, update: Outgoing) -> None:
    """Write ``update`` atomically, replacing the previous one (before its ledger entry is written)."""
    if _RECORD in update.delta:
        raise ValueError(f"a model array may not be named {_RECORD!r}")
    record = {"format": FORMAT, "run_key": update.run_key, "round": update.round,
              "update_sha256": update.update_sha256, "metrics": update.metrics}
    with atomic_path(outgoing_path(state_dir)) as tmp, open(tmp, "wb") as fh:
        arrays: dict[str, npt.NDArray[np.generic]] = {**update.delta,
                                                      _RECORD: np.array(json.dumps(record, sort_keys=True))}
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def load_outgoing(state_dir: Path, *, run_key: str, round: int, update_sha256: str) -> Outgoing | None:
    """The kept update of (``run_key``, ``round``) whose digest is ``update_sha256``; None otherwise.

    None (with a warning saying why) when there is no file, it cannot be read, or it is another
    round's or another update's: such a file must not be sent for this round.
    """
    path = outgoing_path(state_dir)
    if not path.exists():
        log.warning("%s: no kept update", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            record = json.loads(str(data[_RECORD]))
            delta: Delta = {k: data[k] for k in data.files if k != _RECORD}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable kept update (%s)", path, exc)
        return None
    found = (record.get("format"), record.get("run_key"), record.get("round"), record.get("update_sha256"))
    if found != (FORMAT, run_key, round, update_sha256):
        log.warning("%s: the kept update is for run %s round %s (%s...), not round %d's", path,
                    found[1], found[2], str(found[3])[:12], round)
        return None
    return Outgoing(run_key, round, update_sha256, dict(record["metrics"]), delta)
