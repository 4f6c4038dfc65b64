"""InferenceRequest and InferenceResult to and from the gateway core's values."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from edge_lam_msgs.msg import InferenceRequest, InferenceResult

from edge_lam.chain.requests import Request, Result, ResultError, Source
from edge_lam.wire.chain import from_options_msg, from_stage_msgs, to_options_msg, to_stage_msgs

__all__ = ["from_request_msg", "from_result_msg", "to_request_msg", "to_result_msg"]


def to_request_msg(request: Request, stamp: Time | None = None) -> InferenceRequest:
    msg = InferenceRequest(request_id=request.request_id, session_id=request.session_id,
                           keep_session=request.keep_session, model_id=request.model_id, prompt=request.prompt,
                           input_token_ids=list(request.input_token_ids),
                           options=to_options_msg(request.options))
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def from_request_msg(msg: InferenceRequest) -> Request:
    return Request(msg.request_id, msg.session_id, msg.keep_session, msg.model_id, msg.prompt,
                   tuple(msg.input_token_ids), from_options_msg(msg.options))


def to_result_msg(result: Result, stamp: Time) -> InferenceResult:
    msg = InferenceResult(request_id=result.request_id, session_id=result.session_id,
                          chunk_index=result.chunk_index, token_ids=list(result.token_ids),
                          text=result.text, final=result.final, finish_reason=result.finish_reason,
                          error_code=int(result.error_code), error_message=result.error_message,
                          time_to_first_token_s=result.time_to_first_token_s,
                          timings=to_stage_msgs(result.timings), token_sources=[int(x) for x in result.token_sources],
                          policy=result.policy, degraded=result.degraded, drafted=result.drafted,
                          accepted=result.accepted, verify_passes=result.verify_passes)
    msg.header.stamp = stamp
    return msg


def from_result_msg(msg: InferenceResult) -> Result:
    """A chunk another gateway sent (what a standby mirrors); codes it does not know read as internal errors and
    chain-decided tokens rather than failing the callback."""
    codes = {int(e) for e in ResultError}
    sources = {int(s) for s in Source}
    return Result(msg.request_id, msg.chunk_index, tuple(msg.token_ids),
                  tuple(Source(s) if s in sources else Source.CHAIN for s in msg.token_sources), msg.text, msg.final,
                  msg.finish_reason,
                  ResultError(msg.error_code) if msg.error_code in codes else ResultError.INTERNAL,
                  msg.error_message, msg.session_id, msg.time_to_first_token_s, tuple(from_stage_msgs(msg.timings)),
                  policy=msg.policy, degraded=msg.degraded, drafted=msg.drafted, accepted=msg.accepted,
                  verify_passes=msg.verify_passes)
