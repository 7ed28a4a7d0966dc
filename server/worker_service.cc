#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/echo.h"
#include "common/grpc_status.h"
#include "server/grpc_adapter.h"
#include "server/grpc_auth.h"
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

}  // namespace


grpc::Status WorkerService::Connect(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::WorkerDirective, v1::WorkerReport>* stream) {
  auto worker = WorkerOf(*deps_.auth, *context);
  if (!worker.ok()) return ToGrpcStatus(worker.status());
  const WorkerOps& ops = deps_.ops->worker;
  // Where a gang's rank 0 on this worker listens, if it names a port only.
  const std::string peer_host = PeerHost(context->peer());
  v1::WorkerReport report;
  std::string worker_id;
  while (!deps_.shutting_down->load() && stream->Read(&report)) {
    if (worker_id.empty()) {
      worker_id = report.worker_id();
      spdlog::info("worker {} connected from {}: {}", worker_id,
                   context->peer(), DescribeDevices(report));
    }
    auto directives = ops.ReportAll(*worker, report, peer_host);
    if (!directives.ok()) {
      spdlog::warn("worker {}: {}", worker_id, directives.status().ToString());
      return ToGrpcStatus(directives.status());
    }
    bool written = true;
    for (const v1::WorkerDirective& d : *directives) {
      if (!(written = stream->Write(d))) break;
    }
    if (!written) break;
  }
  if (!worker_id.empty()) ops.Disconnected(*worker, worker_id);
  spdlog::info("worker {} disconnected", worker_id);
  return grpc::Status::OK;
}

grpc::Status WorkerService::FetchFile(grpc::ServerContext* context,
                                      const v1::FetchFileRequest* request,
                                      grpc::ServerWriter<v1::FileChunk>* writer) {
  auto worker = WorkerOf(*deps_.auth, *context);
  if (!worker.ok()) return ToGrpcStatus(worker.status());
  auto path = deps_.ops->worker.FetchFile(*worker, *request);
  if (!path.ok()) return ToGrpcStatus(path.status());
  return ToGrpcStatus(StreamFileTo(*path, deps_.chunk_bytes, writer));
}

grpc::Status WorkerService::FetchCheckpointFile(
    grpc::ServerContext* context, const v1::FetchCheckpointFileRequest* request,
    grpc::ServerWriter<v1::FileChunk>* writer) {
  auto worker = WorkerOf(*deps_.auth, *context);
  if (!worker.ok()) return ToGrpcStatus(worker.status());
  auto path = deps_.ops->worker.FetchCheckpointFile(*worker, *request);
  if (!path.ok()) return ToGrpcStatus(path.status());
  return ToGrpcStatus(StreamFileTo(*path, deps_.chunk_bytes, writer));
}

grpc::Status WorkerService::FetchModelFile(
    grpc::ServerContext* context, const v1::FetchModelFileRequest* request,
    grpc::ServerWriter<v1::FileChunk>* writer) {
  auto worker = WorkerOf(*deps_.auth, *context);
  if (!worker.ok()) return ToGrpcStatus(worker.status());
  auto path = deps_.ops->worker.FetchModelFile(*worker, *request);
  if (!path.ok()) return ToGrpcStatus(path.status());
  return ToGrpcStatus(StreamFileTo(*path, deps_.chunk_bytes, writer));
}

grpc::Status WorkerService::UploadResult(
    grpc::ServerContext* context, grpc::ServerReader<v1::UploadResultRequest>* reader,
    v1::ResultFile* response) {
  return Respond(
      WorkerOf(*deps_.auth, *context),
      [&](const WorkerCaller& w) -> absl::StatusOr<v1::ResultFile> {
        auto upload = deps_.ops->worker.StartResultUpload(w);
        RETURN_IF_ERROR(FeedUpload(reader, *upload));
        return upload->Finish();
      },
      response);
}

}  // namespace lathe
