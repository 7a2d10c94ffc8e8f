"""One row of the call log as the gateway writes it: the one contract of the gateway (which builds it), the
:class:`~router_ml.calllog.store.CallStore` (which writes it) and the metrics (which count it)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

CLIENT_CLOSED = 499  # the status of a call whose client left before the answer ended (nginx's convention)


@dataclass
class CallRecord:
    """What one answered, failed or abandoned call leaves behind.

    ``status`` is 'ok' or 'error'; ``http_status`` what the client got for this attempt (:data:`CLIENT_CLOSED`: it left).
    ``cache`` is 'exact' or 'semantic' for an answer from the response cache, which cost 0 and saved
    ``saved_usd``. ``degraded_from`` names the model the gateway chose before the tenant's budget made it serve
    a cheaper one. An 'ok' call of a model without a price is logged at cost 0, flagged 'unpriced'. ``kind`` is
    None for a client's call, 'shadow', 'judge' or 'probe' for the shadow judging of call ``judges`` (a verdict
    row holds the two scores in ``judge_routed`` and ``judge_reference``, and the call ids of the rows holding the
    two answers it compared in ``graded`` and ``against``).
    """

    call_id: str
    prompt: str
    model: str
    status: str
    http_status: int
    latency_ms: float
    tenant: str | None = None
    routed: bool = False
    bundle_version: str | None = None
    messages: list[dict] | None = None
    response: str | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    cache: str | None = None
    saved_usd: float | None = None
    degraded_from: str | None = None
    kind: str | None = None
    judges: str | None = None
    judge_routed: float | None = None
    judge_reference: float | None = None
    graded: str | None = None
    against: str | None = None
    task: str = "chat"
    flags: list[str] = field(default_factory=list)

    @property
    def client_closed(self) -> bool:
        return self.status == "error" and self.http_status == CLIENT_CLOSED

    def as_row(self) -> dict:
        """The call-log row: the set fields by column name, an 'ok' call priced from its tokens."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if self.status == "ok":
            row["cost_source"] = "tokens_x_price"
            if self.cost_usd is None:
                row["cost_usd"], row["flags"] = 0.0, [*self.flags, "unpriced"]
        return row
