"""Wire shapes of the Message Batches API (as the SDK's ``types/messages`` define them)."""

from __future__ import annotations

from typing import Literal

from parley.wire.common import ResponseModel
from parley.wire.responses import ErrorDetail, ErrorEnvelope, Message


class RequestCounts(ResponseModel):
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class MessageBatch(ResponseModel):
    id: str
    type: Literal["message_batch"] = "message_batch"
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: RequestCounts
    created_at: str
    expires_at: str
    ended_at: str | None = None
    cancel_initiated_at: str | None = None
    archived_at: str | None = None
    results_url: str | None = None


class MessageBatchPage(ResponseModel):
    data: list[MessageBatch]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeletedMessageBatch(ResponseModel):
    id: str
    type: Literal["message_batch_deleted"] = "message_batch_deleted"


class ErroredResult(ResponseModel):
    """A request's ``errored`` result (the SDK's ``MessageBatchErroredResult``)."""

    type: Literal["errored"] = "errored"
    error: ErrorEnvelope

    @classmethod
    def of(cls, error_type: str, message: str) -> ErroredResult:
        return cls(error=ErrorEnvelope(error=ErrorDetail(type=error_type, message=message)))


class SucceededResult(ResponseModel):
    """A request's ``succeeded`` result (``MessageBatchSucceededResult``)."""

    type: Literal["succeeded"] = "succeeded"
    message: Message


class CanceledResult(ResponseModel):
    """``MessageBatchCanceledResult``: cancelled before it ran to the end."""

    type: Literal["canceled"] = "canceled"


class ExpiredResult(ResponseModel):
    """``MessageBatchExpiredResult``: the batch expired before the request ran."""

    type: Literal["expired"] = "expired"


BatchResult = SucceededResult | ErroredResult | CanceledResult | ExpiredResult

CANCELED = CanceledResult().model_dump_json()
EXPIRED = ExpiredResult().model_dump_json()
