"""Flower's own SecAgg+ (package ``flwr``), run in-process for the side-by-side secagg benchmark.

Nothing of Flower is reimplemented here. The server side is Flower's real ``SecAggPlusWorkflow``
(setup → share keys → collect masked vectors → unmask) and every client is Flower's real
``secaggplus_mod`` with its own per-node ``Context``. The only glue is ``InProcessGrid``: a Flower
``Grid`` that, instead of a SuperLink, serialises each message to protobuf bytes (as the wire
would), hands it to the destination node's ``secaggplus_mod`` and serialises the reply back. A
dropped node simply never answers again, exactly like a node that timed out.

Timing hooks wrap Flower's functions without changing them:

- client masking = Flower's ``_collect_masked_vectors`` (the mod's MaskedInput step: decrypt the
  forwarded key shares, quantise, private mask, one ECDH + pairwise mask per peer, mod,
  ``ndarray_to_bytes``), and within it the time spent in Flower's ``quantize``;
- server unmask = from the moment all Unmask replies are in (``send_and_receive`` returns) until
  the workflow holds the exact integer sum, i.e. calls ``dequantize`` (Shamir combine of the
  needed shares, regenerating the private masks of survivors and the pairwise masks of dropped
  nodes, subtracting them, mod).

Imported only by ``benchmarks/secagg_bench.py`` (``flwr`` is in the ``bench`` extra only).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _secagg_common import RunTimes, mean_error
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.serverapp.grid import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["FLOWER_VERSION", "run_flower_secaggplus"]

import flwr

# The package __init__ files re-export the functions under the module names, so import the
# modules themselves (their globals are what the timing hooks wrap).
mod_module = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
wf_module = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")

FLOWER_VERSION: str = getattr(flwr, "__version__", "unknown")

# Flower's documented SecAgg+ defaults: clip to [-8, 8], 2^22 quantisation levels, masks mod 2^32.
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 1 << 22
MODULUS_RANGE = 1 << 32
NUM_EXAMPLES = 100  # each client's FedAvg weight (≤ max_weight=1000, Flower's default)


@dataclass
class FlowerRun:
    """Raw per-node measurements of one in-process SecAgg+ round."""

    client_mask_s: dict[int, float] = field(default_factory=dict)  # node id → MaskedInput time
    client_quantize_s: dict[int, float] = field(default_factory=dict)  # its quantize() part
    upload_bytes: dict[int, int] = field(default_factory=dict)  # node id → bytes sent, all stages


class _Clock:
    """Timestamps taken by the hooks of one run."""

    def __init__(self) -> None:
        self.unmask_replies_in: float | None = None
        self.sum_ready: float | None = None


class InProcessGrid(Grid):  # type: ignore[misc,unused-ignore]
    """A Flower ``Grid`` whose nodes are ``secaggplus_mod`` instances in this process."""

    def __init__(
        self,
        updates: dict[int, np.ndarray],
        drop_before_masked_input: set[int],
        clock: _Clock,
        run: FlowerRun,
    ) -> None:
        self._updates = updates
        self._dropped = drop_before_masked_input
        self._clock = clock
        self._run = run
        self._contexts = {
            nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
            for nid in updates
        }

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used by the workflow
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover - not used by the workflow
        raise NotImplementedError

    def create_message(  # pragma: no cover - not used by the workflow
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies: list[Message] = []
        stage = ""
        for msg in messages:
            wire = message_to_proto(msg).SerializeToString()
            incoming = message_from_proto(_parse(wire))
            nid = msg.metadata.dst_node_id
            stage = str(incoming.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
            if nid in self._dropped and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
                continue  # dropped after ShareKeys: never answers again
            reply = mod_module.secaggplus_mod(incoming, self._contexts[nid], self._train(nid))
            reply_wire = message_to_proto(reply).SerializeToString()
            self._run.upload_bytes[nid] = self._run.upload_bytes.get(nid, 0) + len(reply_wire)
            replies.append(message_from_proto(_parse(reply_wire)))
        if stage == Stage.UNMASK:
            self._clock.unmask_replies_in = time.perf_counter()
        return replies

    def _train(self, nid: int) -> Callable[[Message, Context], Message]:
        """The ClientApp behind the mod: 'training' returns this node's fixed update."""

        def call_next(msg: Message, ctxt: Context) -> Message:
            fitres = FitRes(
                status=Status(code=Code.OK, message="ok"),
                parameters=ndarrays_to_parameters([self._updates[nid]]),
                num_examples=NUM_EXAMPLES,
                metrics={},
            )
            return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

        return call_next


def _parse(wire: bytes) -> Any:
    from flwr.proto.message_pb2 import Message as ProtoMessage

    proto = ProtoMessage()
    proto.ParseFromString(wire)
    return proto


@contextmanager
def _hooks(clock: _Clock, run: FlowerRun) -> Iterator[None]:
    """Wrap Flower's own step functions with timers, restoring them afterwards."""
    real_collect = getattr(mod_module, "_collect_masked_vectors")  # noqa: B009
    real_dequantize = getattr(wf_module, "dequantize")  # noqa: B009
    real_quantize = getattr(mod_module, "quantize")  # noqa: B009
    quantize_s: list[float] = []

    def timed_quantize(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = real_quantize(*args, **kwargs)
        quantize_s.append(time.perf_counter() - start)
        return out

    def timed_collect(state: Any, configs: Any, num_examples: int, params: Parameters) -> Any:
        quantize_s.clear()
        start = time.perf_counter()
        out = real_collect(state, configs, num_examples, params)
        run.client_mask_s[int(state.nid)] = time.perf_counter() - start
        run.client_quantize_s[int(state.nid)] = sum(quantize_s)
        return out

    def timed_dequantize(*args: Any, **kwargs: Any) -> Any:
        clock.sum_ready = time.perf_counter()
        return real_dequantize(*args, **kwargs)

    setattr(mod_module, "_collect_masked_vectors", timed_collect)  # noqa: B010
    setattr(wf_module, "dequantize", timed_dequantize)  # noqa: B010
    setattr(mod_module, "quantize", timed_quantize)  # noqa: B010
    try:
        yield
    finally:
        setattr(mod_module, "_collect_masked_vectors", real_collect)  # noqa: B010
        setattr(wf_module, "dequantize", real_dequantize)  # noqa: B010
        setattr(mod_module, "quantize", real_quantize)  # noqa: B010


def run_flower_secaggplus(
    updates: dict[int, np.ndarray], dropped: set[int], threshold: int
) -> RunTimes:
    """Run one real SecAgg+ round over ``updates`` (node id → float vector) and time its steps.

    Every node is a neighbour of every other (``num_shares`` = n), as in Concordia's protocol, so
    both do the same amount of masking work.
    """
    n = len(updates)
    d = next(iter(updates.values())).shape[0]
    run = FlowerRun()
    clock = _Clock()
    grid = InProcessGrid(updates, dropped, clock, run)

    server_ctx = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=1),
        strategy=FedAvg(
            fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0
        ),
    )
    for nid in updates:
        server_ctx.client_manager.register(GridClientProxy(nid, grid, run_id=1))
    server_ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": 1})
    server_ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(d, dtype=np.float32)]), keep_input=True
    )
    workflow = wf_module.SecAggPlusWorkflow(
        num_shares=n,
        reconstruction_threshold=threshold,
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
    )
    # What Flower's own ServerApp runner sets before running a workflow (server/compat/app.py).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    with _hooks(clock, run):
        workflow(grid, server_ctx)

    if clock.unmask_replies_in is None or clock.sum_ready is None:
        raise RuntimeError("Flower's SecAgg+ workflow halted before producing a sum")
    survivors = [nid for nid in updates if nid not in dropped]
    # FedAvg's weighted mean of the (identical) aggregated vectors is the plain survivor mean.
    aggregate = _first_array(server_ctx.state.array_records[MAIN_PARAMS_RECORD])
    return RunTimes(
        client_mask_s=[run.client_mask_s[nid] for nid in survivors],
        client_quantize_s=[run.client_quantize_s[nid] for nid in survivors],
        server_unmask_s=clock.sum_ready - clock.unmask_replies_in,
        upload_bytes=[run.upload_bytes[nid] for nid in survivors],
        max_abs_error=mean_error(aggregate, updates, dropped),
    )


def _first_array(record: ArrayRecord) -> np.ndarray:
    return np.asarray(next(iter(record.values())).numpy()).reshape(-1)
