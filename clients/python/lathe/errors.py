"""Typed errors: one class per gRPC status code, with what lathed names.

lathed attaches the standard rich error details to every error (a
google.rpc.Status in the ``grpc-status-details-bin`` trailer, see
common/grpc_status.h): an ErrorInfo whose reason is a stable upper-case code
(INVALID_FIELD, INVALID_LINE, LIMIT_EXCEEDED, NOT_FOUND, WRONG_STATE, ...)
and whose metadata names the field, the line and the limit, plus a
BadRequest for bad input. A LatheError carries them parsed, so callers need
not read the message::

    try:
        client.jobs.create(model="lathe-demo", training_file=fid, lora={"alpha": -1})
    except lathe.InvalidArgument as e:
        print(e.field)   # "lora.alpha"
"""

import grpc

from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


class LatheError(Exception):
    """A call lathed refused, or a download that did not arrive whole.

    Attributes:
      code: the grpc.StatusCode.
      message: lathed's message, e.g. "lora.alpha: must be in (0, 65536]".
      reason: ErrorInfo's reason, e.g. "INVALID_FIELD"; "" if none came.
      metadata: ErrorInfo's metadata (keys "field", "line", "limit").
      violations: BadRequest's field violations, [(field, description)].
      details: the google.rpc.Status lathed sent, or None.
    """

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message, *, reason="", metadata=None, violations=(), details=None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations)
        self.details = details

    @property
    def field(self):
        """The field at fault ("lora.alpha", "messages[1].role"), or None."""
        return self.metadata.get("field")

    @property
    def line(self):
        """The 1-based line of an uploaded file at fault, or None."""
        line = self.metadata.get("line")
        return int(line) if line is not None else None

    @property
    def limit(self):
        """The lathed flag whose limit was passed ("max_line_bytes"), or None."""
        return self.metadata.get("limit")

    def __str__(self):
        return f"{self.code.name}: {self.message}"


class Cancelled(LatheError):
    code = grpc.StatusCode.CANCELLED


class Unknown(LatheError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(LatheError):
    """Bad input; .field or .line says where."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(LatheError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(LatheError):
    """No such id, also for another project's ids."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LatheError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(LatheError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(LatheError):
    """A quota or size limit; .limit names lathed's flag."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(LatheError):
    """The job or file is in the wrong state for the call."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(LatheError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(LatheError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(LatheError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(LatheError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(LatheError):
    """lathed cannot be reached or is stopping: try again later."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(LatheError):
    """What arrived does not match its declared size or SHA-256."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(LatheError):
    """No API key, or one lathed does not know (or has revoked)."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_rpc_error(error):
    """The LatheError for a grpc.RpcError raised by a call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = _BY_CODE.get(code, Unknown)
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == _DETAILS_KEY:
            return cls(message, **_parse_details(value))
    return cls(message)


def _parse_details(serialized):
    """LatheError's keyword arguments from a serialized google.rpc.Status."""
    status = status_pb2.Status.FromString(serialized)
    parsed = {"details": status, "violations": []}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            parsed["reason"] = info.reason
            parsed["metadata"] = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            parsed["violations"] += [(v.field, v.description) for v in bad.field_violations]
    return parsed
