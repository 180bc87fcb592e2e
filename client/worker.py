"""``python -m fedgenome.client.worker``: one long-lived ClientApp process serving every task of a SuperNode.

Stock Flower starts a fresh ``flwr-clientapp`` process for every message: Python, ``import torch``
and ``flwr``, the app, the site's data and the model, 6-11 s on 2 cores before the handler starts.
Here the SuperNode runs with ``--isolation process`` and this worker polls its local Runtime API
(``AcquireTask``) and serves each task in-process with the calls ``flwr-clientapp`` makes: pull the
task input (context, run, app bundle), pull the message, load the ClientApp from the bundle
(client/app_loader.py), call it, push the reply and the task output (the context with its
``state``, which SecAgg+ keeps between its stages), and keep the task's heartbeat going.

What outlives a message: the imports (third-party packages are preloaded at start; the project's
own come from the app bundle) and the bundle's module state, in which ``fedgenome.client.cache`` keeps the
site's immutable data. The ledger, ``state/``, the model and the Opacus engine are read or built
per message by the app.

Random generators are reseeded from OS entropy at the start of every task (torch's, numpy's and
:mod:`random`'s global ones). Opacus without ``secure_mode`` draws its DP noise from torch's global
generator, and in a long-lived process that generator carries over from task to task: once any
task seeds it for reproducibility (``torch.manual_seed(seed)`` before building a model, as the
server side and the baseline trainer do), every later task of every run would draw its noise as a
fixed function of that seed, so two messages could add the very same noise, which the difference
of the two updates then cancels. Reseeding confines a task's seeding to that task; it also keeps a
forked or restored copy of the worker from sharing the generators' state.

An exception in the app becomes an error reply and the worker goes on. ``SystemExit`` or
``KeyboardInterrupt`` in the app, and SIGTERM, are reported as a failed task, then the worker exits;
after a hard crash the SuperNode lets the task expire and answers "ClientApp crashed". Whoever
started the worker restarts it (client/supervisor.py).

Security: only app bundles the node trusts are installed and run (client/trust.py: the installed
fedgenome's, and those pinned with ``--trust``). The Runtime API is HTTPS (``--root-certificates``,
the CA of the SuperNode's Runtime API certificate) and ``AcquireTask`` is HMAC-signed with the
secret in ``--superexec-auth-secret-file``, the SuperNode's own; every other call carries the task's
token. Each task served adds one line to ``--journal`` (a local file, never sent): time, worker pid,
run, task, message type, round, seconds in the app, status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import httpx
import numpy as np
import torch
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp.client_app import LoadClientAppError
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from fedgenome.client.app_loader import AppLoader
from fedgenome.client.trust import TrustedBundles
from fedgenome.configs.errors import ConfigError
from fedgenome.shared.app_bundle import parse_digest
from fedgenome.shared.clock import utc_now_text

log = logging.getLogger("fedgenome.worker")
PRELOAD = ("numpy", "torch", "opacus", "pysam", "pydantic", "scipy", "safetensors", "cryptography",
           "flwr.clientapp", "flwr.client.mod", "flwr.compat.common.recorddict_compat")
"""Third-party modules imported at start, before the first message (never the project's own)."""
POLL_FIRST, POLL_CAP, IDLE_POLL, IDLE_AFTER = 0.02, 0.25, 1.0, 300.0
"""AcquireTask POLL_FIRST s after a task, growing by half per empty poll to POLL_CAP; IDLE_POLL once
nothing came for IDLE_AFTER s. Each poll is one HTTPS request to the SuperNode."""
PULL_FIRST, PULL_CAP = 0.02, 0.25  # object pull back-off (Flower: 1 s doubling to 10 s)
MESSAGE_WAIT = 5.0  # seconds to wait for a task's message (the SuperNode stores it just after the task)
AUTH_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})


@dataclass(frozen=True)
class Options:
    """Where the SuperNode's Runtime API is and how to prove who we are to it."""

    address: str
    root_certificates: Path | None  # None: plaintext (only with --insecure)
    secret_file: Path | None
    journal: Path | None
    trust: tuple[str, ...] = ()  # bundles trusted besides the installed fedgenome's (--trust)


@dataclass(frozen=True)
class TaskInput:
    """What a task hands the ClientApp."""

    message: Message
    context: Context
    run: Run
    fab: Fab


@dataclass(frozen=True)
class Served:
    """One journal line: a task this worker served."""

    time: str
    pid: int
    run: int
    task: int
    type: str
    round: str
    seconds: float
    status: str


def reseed_from_os_entropy() -> None:
    """Reseed torch's, numpy's and :mod:`random`'s global generators from OS entropy (see module doc)."""
    torch.manual_seed(int.from_bytes(os.urandom(8), "little"))
    np.random.seed(int.from_bytes(os.urandom(4), "little"))
    random.seed(os.urandom(32))


def runtime_client(options: Options, interceptors: list[ProtobufClientInterceptor], *,
                   retry: bool) -> RuntimeHttpClient:
    """A client of the SuperNode's Runtime API."""
    certs = options.root_certificates
    return RuntimeHttpClient.from_server_address(
        server_address=options.address, insecure=certs is None,
        root_certificates=None if certs is None else certs.read_bytes(),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), *interceptors],
        retry_invoker=make_simple_http_retry_invoker() if retry else None)


def pull_input(client: RuntimeHttpClient) -> TaskInput:
    """The task's context, run, bundle and message, as ``flwr-clientapp`` pulls them."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id = res.task_id, res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    deadline = time.monotonic() + MESSAGE_WAIT
    while not (pulled := client.PullMessages(PullAppMessagesRequest())).messages_list:
        if time.monotonic() > deadline:
            raise RuntimeError("No messages received from Runtime API")
        time.sleep(0.01)  # the SuperNode creates the task a moment before it stores the message
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_FIRST, backoff_cap=PULL_CAP)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as flwr-clientapp sets it
    return TaskInput(message, context, run, fab)


def _heartbeat(client: RuntimeHttpClient, lost: threading.Event) -> HeartbeatSender:
    """The task's heartbeat; a refused one marks the task lost (Flower's would SIGINT the process)."""
    def beat() -> bool:
        try:
            if not client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success:
                lost.set()
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as err:
            if err.response.status_code in (503, 504):
                return False
            lost.set()
        return True

    return HeartbeatSender(beat)


class Worker:
    """Polls the Runtime API for ClientApp tasks and serves them in this process."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.apps = AppLoader(trusted=TrustedBundles.of_installed(options.trust), keep=frozenset(sys.modules))
        auth: list[ProtobufClientInterceptor] = []
        if options.secret_file is not None:
            auth.append(SuperExecAuthHttpInterceptor(master_secret=options.secret_file.read_bytes(),
                                                     protected_methods=AUTH_METHODS))
        self.acquirer = runtime_client(options, auth, retry=False)

    def acquire(self) -> str | None:
        """A pending ClientApp task's token, or None when there is none."""
        res = self.acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return res.token if res.HasField("task") and res.token else None

    def serve_forever(self) -> None:
        """Serve tasks until interrupted; a SuperNode not (yet) answering is waited for."""
        last, unreachable, wait = time.monotonic(), False, POLL_FIRST
        while True:
            try:
                token = self.acquire()
            except httpx.TransportError as exc:
                if not unreachable:
                    log.info("waiting for the SuperNode's Runtime API at %s (%s)",
                             self.options.address, exc)
                unreachable = True
                time.sleep(0.5)
                continue
            unreachable = False
            if token is None:
                time.sleep(wait if time.monotonic() - last < IDLE_AFTER else IDLE_POLL)
                wait = min(wait * 1.5, POLL_CAP)
                continue
            self.serve(token)
            last, wait = time.monotonic(), POLL_FIRST

    def serve(self, token: str) -> None:
        """Serve one task; re-raise (after reporting it) what should end the process."""
        client = runtime_client(self.options, [RuntimeTokenHttpInterceptor(token)], retry=True)
        lost = threading.Event()
        heartbeat = _heartbeat(client, lost)
        heartbeat.start()
        inp: TaskInput | None = None
        reply: Message | None = None
        fatal: BaseException | None = None
        begin = time.perf_counter()
        try:
            reseed_from_os_entropy()
            inp = pull_input(client)
            app = self.apps.app(inp.run, inp.fab)
            begin = time.perf_counter()
            reply, status, details = app(message=inp.message, context=inp.context), SubStatus.COMPLETED, ""
        except BaseException as exc:  # every failure is reported to the SuperNode first
            reply, status, details = _error_reply(exc, inp)
            fatal = None if isinstance(exc, Exception) else exc
        seconds = time.perf_counter() - begin
        try:
            if reply is not None and inp is not None:
                push_message(client, reply, inp.context)
        except Exception as exc:  # a lost task, or the SuperNode went away
            log.error("could not push the reply%s: %s", " (the task expired)" if lost.is_set() else "", exc)
        finally:
            push_task_output(client=client, context=None if inp is None else inp.context,
                             sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        if inp is not None:
            self._journal(inp, seconds=seconds, status=status)
        if fatal is not None:
            raise fatal

    def _journal(self, inp: TaskInput, *, seconds: float, status: str) -> None:
        meta = inp.message.metadata
        entry = Served(utc_now_text(), os.getpid(), meta.run_id,
                       TaskIdentity.task_id, meta.message_type, meta.group_id, round(seconds, 4), status)
        log.info("served %s message of run %d, round %s, in %.2f s: %s", entry.type, entry.run,
                 entry.round, seconds, status)
        if self.options.journal is not None:
            self.options.journal.parent.mkdir(parents=True, exist_ok=True)
            with open(self.options.journal, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(entry), sort_keys=True) + "\n")


def _error_reply(exc: BaseException, inp: TaskInput | None) -> tuple[Message | None, str, str]:
    """The error reply (as flwr-clientapp makes it), sub-status and details for a failed task."""
    code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(exc, LoadClientAppError)
            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
    reason = f"{type(exc)}:<'{exc}'>"
    log.error("the ClientApp task failed", exc_info=exc)
    reply = None if inp is None else Message(Error(code=code, reason=reason), reply_to=inp.message)
    return reply, SubStatus.FAILED, reason


def preload() -> None:
    """Import the third-party modules the app needs, so the first message does not pay for them."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("could not preload %s: %s", name, exc)


def _parse(argv: list[str] | None) -> tuple[Options, int | None]:
    parser = argparse.ArgumentParser(prog="python -m fedgenome.client.worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's HOST:PORT")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--root-certificates", type=Path, help="CA certificate of the Runtime API")
    tls.add_argument("--insecure", action="store_true", help="plaintext Runtime API (tests only)")
    parser.add_argument("--superexec-auth-secret-file", type=Path, help="the SuperNode's secret")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) ends")
    parser.add_argument("--journal", type=Path, help="append a line per task served to this file")
    parser.add_argument("--trust", action="append", default=[], metavar="DIGEST",
                        help="also run the app bundle with this content digest (repeatable)")
    args = parser.parse_args(argv)
    for path in (args.root_certificates, args.superexec_auth_secret_file):
        if path is not None and not path.is_file():
            parser.error(f"{path}: no such file")
    try:
        trust = tuple(parse_digest(d) for d in args.trust)
    except ConfigError as exc:
        parser.error(str(exc))
    return Options(args.runtime_api_address, args.root_certificates,
                   args.superexec_auth_secret_file, args.journal, trust), args.parent_pid


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run the worker until SIGTERM/SIGINT, the SuperNode's end, or a fatal error in the app."""
    options, parent = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    preload()
    if parent is not None:
        start_parent_process_monitor(parent)
    log.info("ClientApp worker %d serving %s", os.getpid(), options.address)
    try:
        worker = Worker(options)
        log.info("running only the app bundles %s", worker.apps.trusted.describe())
        worker.serve_forever()
    except KeyboardInterrupt:
        log.info("worker %d stopped", os.getpid())
    except httpx.HTTPStatusError as exc:
        sys.exit(f"error: the SuperNode refused the worker ({exc.response.status_code}: "
                 f"{exc.response.text[:200]}); check --superexec-auth-secret-file")


if __name__ == "__main__":
    main()
