"""Lathe's Python client, over the gRPC stubs generated from proto/.

    import lathe

    client = lathe.Client("lathed.internal:7070", "sk-...", ca_cert="/etc/lathe/ca.pem")
    file = client.files.upload("train.jsonl", progress=lambda done, total: print(done, total))
    job = client.jobs.create(model="my-llama", training_file=file.id,
                             hyperparameters={"n_epochs": 3})
    for event in client.jobs.watch(job.id):
        if event.type == "metrics":
            print(event.metrics.step, event.metrics.train_loss)
    client.jobs.download_adapter(job.id, "adapter/")

The messages are lathe.v1's (lathe.v1.fine_tuning_pb2.Job, ...); errors
are lathe.LatheError subclasses named after the gRPC codes.
"""

try:
    from lathe.v1 import fine_tuning_pb2 as _fine_tuning_pb2
except ModuleNotFoundError as e:
    raise ImportError(
        "lathe: the generated gRPC stubs (lathe.v1) are missing: build them with "
        "`ninja -C build lathe_python` and put build/clients/python on PYTHONPATH "
        "(not clients/python)") from e

from lathe.client import Client, Files, Jobs, JobWatch, Models
from lathe.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LatheError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)

JobStatus = _fine_tuning_pb2.JobStatus

__all__ = [
    "Aborted", "AlreadyExists", "Cancelled", "Client", "DataLoss", "DeadlineExceeded",
    "FailedPrecondition", "Files", "Internal", "InvalidArgument", "JobStatus", "JobWatch",
    "Jobs", "LatheError", "Models", "NotFound", "OutOfRange", "PermissionDenied",
    "ResourceExhausted", "Unauthenticated", "Unavailable", "Unimplemented", "Unknown",
]
