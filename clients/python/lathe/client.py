"""lathe.Client: lathed's public gRPC API as plain Python calls.

Every call raises a lathe.LatheError subclass when lathed refuses it (see
lathe.errors) and retries nothing, except that a watch re-attaches from its
cursor when its stream drops with UNAVAILABLE (lathed ends WatchJob streams
after --max_stream_seconds, and when it stops).

Thread-safe: one Client (one channel) may be shared by threads.
"""

import hashlib
import os
import time

import grpc

from lathe import errors
from lathe.messages import enum_value, fill
from lathe.v1 import (
    files_pb2,
    files_pb2_grpc,
    fine_tuning_pb2,
    fine_tuning_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

# As the C++ client: unary calls get 30 s; uploads, downloads and watches
# none (they last as long as the data or the job).
_UNARY_TIMEOUT = 30.0
_CHUNK_BYTES = 1 << 20
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    # A watch re-attaches within seconds of a lathed restart.
    ("grpc.max_reconnect_backoff_ms", 5000),
]
_FINAL = (
    fine_tuning_pb2.JOB_STATUS_SUCCEEDED,
    fine_tuning_pb2.JOB_STATUS_FAILED,
    fine_tuning_pb2.JOB_STATUS_CANCELLED,
)


class Client:
    """A client of lathed, identified by an API key (and so its project).

    Args:
      server: "host:port"; default $LATHE_SERVER, else "127.0.0.1:7070".
      api_key: the key; default $LATHE_API_KEY.
      ca_cert: a PEM file of the CA that signed lathed's certificate;
        default $LATHE_CA_CERT, else the system's roots.
      insecure: plaintext, for a lathed started with --insecure; default
        on if $LATHE_INSECURE is "1".
      server_name: the name expected in lathed's certificate when it is not
        the host dialled.
      timeout: seconds allowed for each unary call.

    Connects lazily: a wrong address or certificate shows at the first call,
    as lathe.Unavailable. Use as a context manager, or call close().
    """

    def __init__(self, server=None, api_key=None, ca_cert=None, insecure=False, *,
                 server_name=None, timeout=_UNARY_TIMEOUT):
        self.server = server or os.environ.get("LATHE_SERVER") or "127.0.0.1:7070"
        if api_key is None:
            api_key = os.environ.get("LATHE_API_KEY", "")
        ca_cert = ca_cert or os.environ.get("LATHE_CA_CERT") or None
        insecure = insecure or os.environ.get("LATHE_INSECURE") == "1"
        options = list(_CHANNEL_OPTIONS)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if insecure:
            self.channel = grpc.insecure_channel(self.server, options)
        else:
            roots = None
            if ca_cert:
                with open(ca_cert, "rb") as f:
                    roots = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self.channel = grpc.secure_channel(self.server, credentials, options)
        self.metadata = (("authorization", "Bearer " + api_key),) if api_key else ()
        self.timeout = timeout
        self.files = Files(self)
        self.jobs = Jobs(self)
        self.models = Models(self)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _unary(self, method, request):
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    def _stream(self, method, request, timeout=None):
        """The responses of a server-streaming call; cancelled if abandoned."""
        call = method(request, metadata=self.metadata, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None
        finally:
            call.cancel()

    def _pages(self, method, request):
        """Every item of a cursor-paged list call (ListFiles, ListJobs, ...)."""
        while True:
            page = self._unary(method, request)
            yield from page.data
            if not page.has_more or not page.data:
                return
            request.after = page.data[-1].id


class Files:
    """Training data files (client.files)."""

    def __init__(self, client):
        self._client = client
        self._stub = files_pb2_grpc.FilesStub(client.channel)

    def upload(self, path, purpose="fine-tune", progress=None, *, chunk_size=_CHUNK_BYTES):
        """Streams a local JSONL file to lathed with its size and SHA-256.

        lathed checks every line before it answers; a bad line raises
        lathe.InvalidArgument whose .line and .field say where, and nothing
        is stored. progress(done, total) is called with the bytes sent after
        each chunk (from gRPC's sending thread); an exception it raises
        cancels the upload and is raised here.
        Returns the File.
        """
        total = os.path.getsize(path)
        sha256 = _sha256_file(path)
        header = files_pb2.UploadFileHeader(
            filename=os.path.basename(path), purpose=purpose, bytes=total, sha256=sha256)
        failure = []

        def requests():
            yield files_pb2.UploadFileRequest(header=header)
            done = 0
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(chunk_size):
                        yield files_pb2.UploadFileRequest(chunk=chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            except Exception as e:
                # gRPC cancels the call when the request iterator raises.
                failure.append(e)
                raise

        try:
            return self._stub.Upload(requests(), metadata=self._client.metadata)
        except grpc.RpcError as e:
            if failure:
                raise failure[0] from None
            raise errors.from_rpc_error(e) from None

    def get(self, file_id):
        """The File. lathe.NotFound if there is none (in the caller's project)."""
        return self._client._unary(self._stub.GetFile, files_pb2.GetFileRequest(file_id=file_id))

    def list(self, purpose="", limit=None):
        """Every File, newest first, fetched `limit` (1..100) per call."""
        request = files_pb2.ListFilesRequest(purpose=purpose, limit=limit or 0)
        return self._client._pages(self._stub.ListFiles, request)

    def delete(self, file_id):
        """Deletes a file; lathe.FailedPrecondition while an unfinished job uses it."""
        return self._client._unary(
            self._stub.DeleteFile, files_pb2.DeleteFileRequest(file_id=file_id))

    def download(self, file_id, path, progress=None):
        """Writes a file's content to `path`, checked against its SHA-256.

        Written to path + ".part" and renamed into place only when whole;
        lathe.DataLoss if the content does not match. Returns `path`.
        """
        file = self.get(file_id)
        stream = self._client._stream(
            self._stub.DownloadFile, files_pb2.DownloadFileRequest(file_id=file_id))
        receiver = _FileReceiver(progress)
        try:
            receiver.start(path + ".part", file.bytes)
            for content in stream:
                receiver.write(content.data)
            receiver.finish(file.bytes, file.sha256, path)
        finally:
            receiver.abandon()
        return path


class Jobs:
    """Fine-tuning jobs (client.jobs)."""

    def __init__(self, client):
        self._client = client
        self._stub = fine_tuning_pb2_grpc.FineTuningStub(client.channel)

    def create(self, request=None, /, *, hyperparameters=None, **fields):
        """Creates a job; returns the Job (queued, every auto resolved).

        `request` is a CreateJobRequest, and/or the keyword arguments are its
        fields (lathe.messages.fill: dicts for messages, short enum names):

            client.jobs.create(model="lathe-demo", training_file=file.id,
                               hyperparameters={"n_epochs": 2},
                               lora={"rank": 4}, suffix="mine", seed=7)

        `method` may be a method type ("dpo") or a Method dict;
        `hyperparameters` goes to that method's message (supervised when no
        type is given). Unknown fields raise TypeError before anything is
        sent; lathed's refusals raise lathe.InvalidArgument naming the field
        (.field), lathe.NotFound for a model or file it does not know.
        """
        message = fine_tuning_pb2.CreateJobRequest()
        if request is not None:
            message.CopyFrom(request)
        if isinstance(fields.get("method"), str):
            fields["method"] = {"type": fields["method"]}
        fill(message, fields)
        if hyperparameters is not None:
            kind = message.method.type or "supervised"
            method = message.method.DESCRIPTOR.fields_by_name.get(kind)
            if (method is None or method.message_type is None
                    or "hyperparameters" not in method.message_type.fields_by_name):
                raise ValueError(f"hyperparameters: method {kind!r} takes none")
            fill(getattr(message.method, kind), {"hyperparameters": hyperparameters},
                 f"method.{kind}.")
        return self._client._unary(self._stub.CreateJob, message)

    def get(self, job_id):
        """The Job: status, progress, queue position, error, result files."""
        return self._client._unary(self._stub.GetJob, fine_tuning_pb2.GetJobRequest(job_id=job_id))

    def list(self, status=None, metadata=None, limit=None):
        """Every Job, newest first, fetched `limit` (1..100) per call; only
        those with `status` ("running" or a JobStatus) and all of `metadata`."""
        request = fine_tuning_pb2.ListJobsRequest(limit=limit or 0, metadata=metadata or {})
        if status is not None:
            request.status = enum_value(fine_tuning_pb2.JobStatus.DESCRIPTOR, status, "status")
        return self._client._pages(self._stub.ListJobs, request)

    def cancel(self, job_id):
        """Returns the Job (cancelling or cancelled); lathe.FailedPrecondition
        if it has finished."""
        return self._client._unary(
            self._stub.CancelJob, fine_tuning_pb2.CancelJobRequest(job_id=job_id))

    def pause(self, job_id):
        """Checkpoints and stops a queued or running job; returns it, paused."""
        return self._client._unary(
            self._stub.PauseJob, fine_tuning_pb2.PauseJobRequest(job_id=job_id))

    def resume(self, job_id):
        """Queues a paused job again, to continue from its latest checkpoint."""
        return self._client._unary(
            self._stub.ResumeJob, fine_tuning_pb2.ResumeJobRequest(job_id=job_id))

    def events(self, job_id, after=None, limit=None):
        """Every JobEvent so far after the event id `after`, oldest first,
        fetched `limit` (1..1000) per call."""
        request = fine_tuning_pb2.ListJobEventsRequest(
            job_id=job_id, after=after or "", limit=limit or 0)
        return self._client._pages(self._stub.ListJobEvents, request)

    def checkpoints(self, job_id):
        """The job's Checkpoints, oldest first."""
        return list(self._client._unary(
            self._stub.ListJobCheckpoints,
            fine_tuning_pb2.ListJobCheckpointsRequest(job_id=job_id)).data)

    def watch(self, job_id, after=None, timeout=None):
        """Follows a job: a JobWatch, iterating over its JobEvents from the
        one after `after` (None: the first) until its final event."""
        return JobWatch(self._client, self._stub, job_id, after, timeout)

    def wait(self, job_id, timeout=None):
        """Blocks until the job has finished (succeeded, failed or
        cancelled; a paused job is waited for too); returns the final Job.
        lathe.DeadlineExceeded after `timeout` seconds (lathe.Unavailable
        if lathed cannot be reached then)."""
        job = self.get(job_id)
        if job.status in _FINAL:
            return job
        for _ in self.watch(job_id, timeout=timeout):
            pass
        return self.get(job_id)

    def download_adapter(self, job_id, out_dir, progress=None):
        """Downloads the trained adapter (PEFT layout; a model folder for full
        fine-tuning) into `out_dir`, created if needed.

        Each file is checked against the size and SHA-256 lathed announces
        (lathe.DataLoss if it does not match) and renamed into place only
        when whole. progress(done, total): bytes received, of the files
        announced so far. Returns the paths written.
        """
        request = fine_tuning_pb2.DownloadAdapterRequest(job_id=job_id)
        return _receive_files(self._client._stream(self._stub.DownloadAdapter, request),
                              out_dir, progress)

    def download_checkpoint(self, job_id, out_dir, step=0, progress=None):
        """As download_adapter, for the checkpoint of `step` (0: the latest)."""
        request = fine_tuning_pb2.DownloadCheckpointRequest(job_id=job_id, step_number=step)
        return _receive_files(self._client._stream(self._stub.DownloadCheckpoint, request),
                              out_dir, progress)


class Models:
    """Base models and fine-tuned models (client.models)."""

    def __init__(self, client):
        self._client = client
        self._stub = models_pb2_grpc.ModelsStub(client.channel)

    def list(self):
        """Every Model: base models by name, then fine-tuned ones newest first."""
        return list(self._client._unary(self._stub.ListModels, models_pb2.ListModelsRequest()).data)

    def get(self, model_id):
        """A Model by id: a base model's name or a fine-tuned "ft:..." name."""
        return self._client._unary(self._stub.GetModel, models_pb2.GetModelRequest(model_id=model_id))


class JobWatch:
    """An iterator over a job's events as they happen (client.jobs.watch).

    Ends after the job's final event. When the stream drops with UNAVAILABLE
    (lathed's --max_stream_seconds, or lathed stopping) it re-attaches from
    the last event seen, after a short backoff, so no event is missed or
    repeated; any other error is raised, as is UNAVAILABLE once `timeout`
    seconds have passed (lathe.DeadlineExceeded if the deadline hits an
    open stream).

    Attributes:
      cursor: the id of the last event yielded (None before the first).
      job: the Job as of the last status change seen (None before one).
      reattaches: how many times the watch re-attached.
    """

    def __init__(self, client, stub, job_id, after, timeout):
        self.job_id = job_id
        self.cursor = after
        self.job = None
        self.reattaches = 0
        self._client = client
        self._stub = stub
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._events = self._follow()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._events)

    def close(self):
        """Stops watching (closes the open stream)."""
        self._events.close()

    def _remaining(self):
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0)

    def _follow(self):
        backoff = 0.2
        while True:
            request = fine_tuning_pb2.WatchJobRequest(job_id=self.job_id, after=self.cursor or "")
            call = self._stub.WatchJob(request, metadata=self._client.metadata,
                                       timeout=self._remaining())
            try:
                for update in call:
                    self.cursor = update.event.id
                    if update.HasField("job"):
                        self.job = update.job
                    backoff = 0.2
                    yield update.event
                return
            except grpc.RpcError as e:
                remaining = self._remaining()
                if e.code() != grpc.StatusCode.UNAVAILABLE or (
                        remaining is not None and remaining <= backoff):
                    raise errors.from_rpc_error(e) from None
            finally:
                call.cancel()
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            self.reattaches += 1


class _FileReceiver:
    """Writes one file at a time under a temporary name, hashing it, and
    renames it into place when its size and SHA-256 match."""

    def __init__(self, progress):
        self.progress = progress
        self.done = 0       # bytes received, all files
        self.total = 0      # bytes announced, all files
        self._out = None
        self._tmp = None

    def start(self, tmp_path, size):
        self._tmp = tmp_path
        self._out = open(tmp_path, "wb")
        self._hash = hashlib.sha256()
        self._got = 0
        self.total += size

    def write(self, data):
        self._out.write(data)
        self._hash.update(data)
        self._got += len(data)
        self.done += len(data)
        if self.progress:
            self.progress(self.done, self.total)

    def finish(self, size, sha256, final_path):
        self._out.close()
        self._out = None
        got, digest = self._got, self._hash.hexdigest()
        if got != size or digest != sha256:
            raise errors.DataLoss(
                f"{os.path.basename(final_path)}: received {got} bytes with SHA-256 "
                f"{digest}, expected {size} bytes with {sha256}")
        os.replace(self._tmp, final_path)
        self._tmp = None

    def abandon(self):
        """Removes a partial file (after an error); a no-op when none is open."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._tmp is not None:
            os.remove(self._tmp)
            self._tmp = None


def _receive_files(stream, out_dir, progress):
    """Receives DownloadAdapter/DownloadCheckpoint's stream: for each file a
    header (ResultFile) then its bytes. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    receiver = _FileReceiver(progress)
    written = []
    current = None
    try:
        for chunk in stream:
            if chunk.WhichOneof("part") == "file":
                if current is not None:
                    written.append(_finish(receiver, current, out_dir))
                current = chunk.file
                if current.name in ("", ".", "..") or "/" in current.name:
                    raise errors.DataLoss(f"lathed sent a bad file name: {current.name!r}")
                receiver.start(os.path.join(out_dir, current.name + ".part"), current.bytes)
            elif current is not None:
                receiver.write(chunk.data)
        if current is not None:
            written.append(_finish(receiver, current, out_dir))
    finally:
        receiver.abandon()
    return written


def _finish(receiver, file, out_dir):
    path = os.path.join(out_dir, file.name)
    receiver.finish(file.bytes, file.sha256, path)
    return path


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()
