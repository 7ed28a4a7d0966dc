#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/echo.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/request_limits.h"
#include "server/services.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

// "cuda NVIDIA H100 80GB HBM3 (79.1 GiB, 78.6 GiB free), …": what an
// operator reads in the log when a worker connects.
std::string DescribeDevices(const v1::WorkerReport& report) {
  std::string out;
  for (const v1::Device& d : report.devices()) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", Echo(d.kind()), " ",
                    Echo(d.name()),
                    absl::StrFormat(" (%.1f GiB, %.1f GiB free)",
                                    d.memory_bytes() / double(1LL << 30),
                                    d.free_memory_bytes() / double(1LL << 30)));
  }
  return out.empty() ? "no devices" : out;
}

absl::StatusOr<v1::ResultFile> ReceiveResult(
    const ServerContext& ctx,
    grpc::ServerReader<v1::UploadResultRequest>* reader) {
  v1::UploadResultRequest msg;
  if (!reader->Read(&msg) || !msg.has_header()) {
    return absl::InvalidArgumentError("header: must come first");
  }
  const v1::UploadResultHeader h = msg.header();
  bool plain_name = !h.name().empty() && h.name().size() <= 128 &&
                    h.name().find_first_of(std::string("/\\\0", 3)) == std::string::npos &&
                    h.name() != "." && h.name() != "..";
  if (h.sha256().size() != 64) {
    return absl::InvalidArgumentError("sha256: required (64 hex digits)");
  }
  RETURN_IF_ERROR(CheckIdField("job_id", h.job_id()));
  RETURN_IF_ERROR(ctx.coordinator->CheckCurrentAttempt(h.job_id(), h.attempt()));
  // A checkpoint holds any plain file names; a LoRA job's result is the
  // PEFT adapter's two files, a full fine-tuning job's a model folder.
  ASSIGN_OR_RETURN(v1::Job job, ctx.store->GetJob(h.job_id()));
  bool allowed = h.checkpoint_step() > 0 || job.adapter() == v1::ADAPTER_TYPE_FULL
                     ? plain_name
                     : h.name() == "adapter_config.json" ||
                           h.name() == "adapter_model.safetensors";
  if (!allowed || h.checkpoint_step() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: \"", Echo(h.name()), "\" is not a result file"));
  }
  ASSIGN_OR_RETURN(auto writer, ctx.blobs->NewWriter());
  while (reader->Read(&msg)) {
    if (!msg.has_chunk()) return absl::InvalidArgumentError("header: sent twice");
    RETURN_IF_ERROR(writer->Append(msg.chunk()));
  }
  if (writer->bytes() != h.bytes()) {
    return absl::DataLossError(absl::StrCat("bytes: announced ", h.bytes(),
                                            ", received ", writer->bytes()));
  }
  // A failed write or fsync is an error here, never a stored file: the
  // worker keeps its previous checkpoint and tries again later.
  ASSIGN_OR_RETURN(std::string sha, writer->Commit(h.sha256()));
  v1::ResultFile f;
  f.set_name(h.name());
  f.set_bytes(h.bytes());
  f.set_sha256(sha);
  // The attempt may have been superseded while the bytes arrived: checked
  // again together with the write.
  absl::Status recorded =
      ctx.coordinator->RecordResultFile(h.job_id(), h.attempt(), h.checkpoint_step(), f);
  if (!recorded.ok()) {
    writer.reset();  // unpinned before the delete waits for pins
    RemoveBlobIfUnreferenced(ctx, sha);
    return recorded;
  }
  return f;
}

}  // namespace

absl::Status WorkerService::CheckAttemptCall(const grpc::ServerContext* context,
                                             const std::string& job_id,
                                             int32_t attempt) const {
  RETURN_IF_ERROR(ctx_.auth->Worker(context));
  RETURN_IF_ERROR(CheckIdField("job_id", job_id));
  return ctx_.coordinator->CheckCurrentAttempt(job_id, attempt);
}

grpc::Status WorkerService::Connect(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::WorkerDirective, v1::WorkerReport>* stream) {
  if (auto st = ctx_.auth->Worker(context); !st.ok()) return ToGrpcStatus(st);
  v1::WorkerReport report;
  std::string worker_id;
  while (!ctx_.shutting_down->load() && stream->Read(&report)) {
    if (worker_id.empty()) {
      worker_id = report.worker_id();
      spdlog::info("worker {} connected from {}: {}", worker_id,
                   context->peer(), DescribeDevices(report));
    }
    auto directive = ctx_.coordinator->HandleReport(report);
    if (!directive.ok()) {
      spdlog::warn("worker {}: {}", worker_id, directive.status().ToString());
      return ToGrpcStatus(directive.status());
    }
    if (!stream->Write(*directive)) break;
  }
  if (!worker_id.empty()) ctx_.coordinator->WorkerDisconnected(worker_id);
  spdlog::info("worker {} disconnected", worker_id);
  return grpc::Status::OK;
}

grpc::Status WorkerService::FetchFile(grpc::ServerContext* context,
                                      const v1::FetchFileRequest* request,
                                      grpc::ServerWriter<v1::FileChunk>* writer) {
  auto st = CheckAttemptCall(context, request->job_id(), request->attempt());
  if (!st.ok()) return ToGrpcStatus(st);
  auto job = ctx_.store->GetJob(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  if (request->file_id() != job->training_file() &&
      request->file_id() != job->validation_file()) {
    return ToGrpcStatus(absl::NotFoundError(absl::StrCat(
        "file_id: ", Echo(request->file_id()), " is not a file of ", job->id())));
  }
  auto file = ctx_.store->GetFile(request->file_id());
  if (!file.ok()) return ToGrpcStatus(file.status());
  st = StreamFileTo(ctx_, ctx_.blobs->PathFor(file->sha256()), writer);
  return ToGrpcStatus(st);
}

grpc::Status WorkerService::FetchCheckpointFile(
    grpc::ServerContext* context, const v1::FetchCheckpointFileRequest* request,
    grpc::ServerWriter<v1::FileChunk>* writer) {
  auto st = CheckAttemptCall(context, request->job_id(), request->attempt());
  if (!st.ok()) return ToGrpcStatus(st);
  auto all = ctx_.store->ListCheckpoints(request->job_id());
  if (!all.ok()) return ToGrpcStatus(all.status());
  for (const v1::Checkpoint& c : *all) {
    if (c.step_number() != request->step()) continue;
    for (const v1::ResultFile& f : c.files()) {
      if (f.name() != request->name()) continue;
      return ToGrpcStatus(StreamFileTo(ctx_, ctx_.blobs->PathFor(f.sha256()), writer));
    }
  }
  return ToGrpcStatus(absl::NotFoundError(absl::StrCat(
      "no file ", Echo(request->name()), " in checkpoint ", request->step(), " of ",
      request->job_id())));
}

grpc::Status WorkerService::FetchModelFile(
    grpc::ServerContext* context, const v1::FetchModelFileRequest* request,
    grpc::ServerWriter<v1::FileChunk>* writer) {
  auto st = CheckAttemptCall(context, request->job_id(), request->attempt());
  if (!st.ok()) return ToGrpcStatus(st);
  auto job = ctx_.store->GetJob(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  auto model = ctx_.store->GetModel(job->model());
  if (!model.ok()) return ToGrpcStatus(model.status());
  for (const v1::ModelFile& f : model->files()) {
    if (f.name() != request->name()) continue;
    // Names come from the registration's directory listing, never from the
    // request, so nothing outside the model folder can be read.
    std::string path = model->path() + "/" + f.name();
    st = StreamFileTo(ctx_, path, writer);
    return ToGrpcStatus(st);
  }
  return ToGrpcStatus(absl::NotFoundError(absl::StrCat(
      "name: ", Echo(request->name()), " is not a file of model ", job->model())));
}

grpc::Status WorkerService::UploadResult(
    grpc::ServerContext* context, grpc::ServerReader<v1::UploadResultRequest>* reader,
    v1::ResultFile* response) {
  if (auto st = ctx_.auth->Worker(context); !st.ok()) return ToGrpcStatus(st);
  auto f = ReceiveResult(ctx_, reader);
  if (!f.ok()) return ToGrpcStatus(f.status());
  *response = *std::move(f);
  return grpc::Status::OK;
}

}  // namespace lathe
