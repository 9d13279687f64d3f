"""PrefixAffinityRouter: Ray Serve's public RequestRouter API (ray.serve.request_router) over prefixes.PrefixTable.

Serve calls choose_replicas() for each handle call to the engine deployment, in the caller's process (the
ingress). The request's first argument is a bridge.Forward, whose route_key decides. Loads are this
router's own count of requests in flight per replica (routed here, not yet completed), which is exact
with one ingress. The ranks returned are the table's order, one replica per rank: Serve takes the first
whose queue is not full. Ray's own prefix router (ray.serve.llm) cannot be used: it needs vLLM or SGLang.
"""

from __future__ import annotations

from collections import Counter

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from zenlm.server.replicas.bridge import Forward
from zenlm.server.replicas.prefixes import PrefixTable


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, block_chars: int = 32, min_match: int = 128, imbalance: int = 4, **_) -> None:
        self.table = PrefixTable(block_chars, min_match, imbalance)
        self.loads: Counter = Counter()  # replica id -> requests in flight
        self.routed: dict[str, ReplicaID] = {}  # internal request id -> the replica it was routed to

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        by_id = {r.replica_id: r for r in candidate_replicas}
        if not by_id:
            return []
        fwd = pending_request.args[0] if pending_request is not None and pending_request.args else None
        key = fwd.route_key if isinstance(fwd, Forward) else ""
        order = self.table.rank(key, {rid: self.loads[rid] for rid in by_id})
        if pending_request is not None:
            request_id = pending_request.metadata.internal_request_id
            previous = self.routed.pop(request_id, None)  # a retry of the same request: undo its last count
            if previous is not None:
                self.loads[previous] -= 1
            self.routed[request_id] = order[0]
            self.loads[order[0]] += 1
            if key:
                self.table.record(key, order[0])
        return [[by_id[rid]] for rid in order]

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        chosen = self.routed.pop(internal_request_id, None)
        if chosen is not None:
            self.loads[chosen] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.forget(replica_id)
        self.loads.pop(replica_id, None)
