// The gRPC services of lathed. Handlers are thin: check the request's shape,
// call the store / blob store / coordinator / event feed, convert the status
// in one place (ToGrpcStatus). All use the synchronous API (a stream holds a
// thread while it runs) except WatchJob, whose streams are idle most of
// their lives: it uses the callback API and the event feed's wake-ups, and
// holds no thread while idle.
#ifndef LATHE_SERVER_SERVICES_H_
#define LATHE_SERVER_SERVICES_H_

#include <atomic>
#include <string>

#include "lathe/v1/admin.grpc.pb.h"
#include "lathe/v1/files.grpc.pb.h"
#include "lathe/v1/fine_tuning.grpc.pb.h"
#include "lathe/v1/models.grpc.pb.h"
#include "lathe/v1/worker.grpc.pb.h"
#include "server/auth.h"
#include "server/coordinator.h"
#include "server/event_feed.h"
#include "server/job_request.h"
#include "server/store/blob_store.h"
#include "server/store/store.h"
#include "server/upload_slots.h"

namespace lathe {

// Settings the services share; constant after start.
struct ServiceOptions {
  int64_t max_upload_bytes = 1LL << 30;      // 1 GiB
  int64_t chunk_bytes = 256 << 10;           // download chunk size
  int64_t max_line_bytes = 4 << 20;          // per JSONL line
  int64_t max_examples_per_file = 1'000'000;
  int max_jobs_in_flight_per_project = 100;  // queued, running or paused
  int max_uploads_in_flight_per_key = 4;     // open Files.Upload calls
  int max_uploads_in_flight = 8;             // of all keys together
  JobDefaults job_defaults;                  // job resolution's operator settings
};

// The objects every service borrows; all must outlive the services.
struct ServerContext {
  const Authenticator* auth;
  store::Store* store;
  store::BlobStore* blobs;
  Coordinator* coordinator;
  ServiceOptions options;
  // Set when lathed is shutting down: long-lived streams end.
  std::atomic<bool>* shutting_down;
  EventFeed* feed;
};

// Uploads hold a slot of uploads_ (see UploadSlots) from their first
// message to their status, so memory for uploads in flight is bounded.
class FilesService final : public v1::Files::Service {
 public:
  explicit FilesService(ServerContext ctx)
      : ctx_(ctx),
        uploads_({.per_key = ctx.options.max_uploads_in_flight_per_key,
                  .per_server = ctx.options.max_uploads_in_flight}) {}
  grpc::Status Upload(grpc::ServerContext* context,
                      grpc::ServerReader<v1::UploadFileRequest>* reader,
                      v1::File* response) override;
  grpc::Status GetFile(grpc::ServerContext* context,
                       const v1::GetFileRequest* request,
                       v1::File* response) override;
  grpc::Status ListFiles(grpc::ServerContext* context,
                         const v1::ListFilesRequest* request,
                         v1::ListFilesResponse* response) override;
  grpc::Status DeleteFile(grpc::ServerContext* context,
                          const v1::DeleteFileRequest* request,
                          v1::DeleteFileResponse* response) override;
  grpc::Status DownloadFile(grpc::ServerContext* context,
                            const v1::DownloadFileRequest* request,
                            grpc::ServerWriter<v1::FileContent>* writer) override;

 private:
  // Authenticates the caller and loads `file_id`, which must be the caller's
  // project's (else NOT_FOUND).
  absl::StatusOr<v1::File> OwnedFile(const grpc::ServerContext* context,
                                     const std::string& file_id) const;

  ServerContext ctx_;
  UploadSlots uploads_;
};

class FineTuningService final
    : public v1::FineTuning::WithCallbackMethod_WatchJob<
          v1::FineTuning::Service> {
 public:
  explicit FineTuningService(ServerContext ctx) : ctx_(ctx) {}
  grpc::Status CreateJob(grpc::ServerContext* context,
                         const v1::CreateJobRequest* request,
                         v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::Status ListJobEvents(grpc::ServerContext* context,
                             const v1::ListJobEventsRequest* request,
                             v1::ListJobEventsResponse* response) override;
  // Follows the job through ctx_.feed until it ends, the key is revoked,
  // the stream reaches --max_stream_seconds or lathed stops.
  grpc::ServerWriteReactor<v1::WatchJobResponse>* WatchJob(
      grpc::CallbackServerContext* context,
      const v1::WatchJobRequest* request) override;
  grpc::Status DownloadAdapter(
      grpc::ServerContext* context, const v1::DownloadAdapterRequest* request,
      grpc::ServerWriter<v1::DownloadChunk>* writer) override;
  grpc::Status PauseJob(grpc::ServerContext* context,
                        const v1::PauseJobRequest* request,
                        v1::Job* response) override;
  grpc::Status ResumeJob(grpc::ServerContext* context,
                         const v1::ResumeJobRequest* request,
                         v1::Job* response) override;
  grpc::Status ListJobCheckpoints(
      grpc::ServerContext* context, const v1::ListJobCheckpointsRequest* request,
      v1::ListJobCheckpointsResponse* response) override;
  grpc::Status DownloadCheckpoint(
      grpc::ServerContext* context, const v1::DownloadCheckpointRequest* request,
      grpc::ServerWriter<v1::DownloadChunk>* writer) override;

 private:
  // Authenticates the caller and loads `job_id`, which must be the caller's
  // project's (else NOT_FOUND, as for a missing job).
  absl::StatusOr<v1::Job> OwnedJob(const grpc::ServerContext* context,
                                   const std::string& job_id) const;

  ServerContext ctx_;
};

class WorkerService final : public v1::Worker::Service {
 public:
  explicit WorkerService(ServerContext ctx) : ctx_(ctx) {}
  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::WorkerDirective, v1::WorkerReport>* stream)
      override;
  grpc::Status FetchFile(grpc::ServerContext* context,
                         const v1::FetchFileRequest* request,
                         grpc::ServerWriter<v1::FileChunk>* writer) override;
  grpc::Status UploadResult(grpc::ServerContext* context,
                            grpc::ServerReader<v1::UploadResultRequest>* reader,
                            v1::ResultFile* response) override;
  grpc::Status FetchCheckpointFile(
      grpc::ServerContext* context, const v1::FetchCheckpointFileRequest* request,
      grpc::ServerWriter<v1::FileChunk>* writer) override;
  grpc::Status FetchModelFile(grpc::ServerContext* context,
                              const v1::FetchModelFileRequest* request,
                              grpc::ServerWriter<v1::FileChunk>* writer) override;

 private:
  // The worker token, and `attempt` being the job's current attempt.
  absl::Status CheckAttemptCall(const grpc::ServerContext* context,
                                const std::string& job_id, int32_t attempt) const;

  ServerContext ctx_;
};

class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(ServerContext ctx) : ctx_(ctx) {}
  grpc::Status CreateApiKey(grpc::ServerContext* context,
                            const v1::CreateApiKeyRequest* request,
                            v1::ApiKey* response) override;
  grpc::Status ListApiKeys(grpc::ServerContext* context,
                           const v1::ListApiKeysRequest* request,
                           v1::ListApiKeysResponse* response) override;
  grpc::Status RevokeApiKey(grpc::ServerContext* context,
                            const v1::RevokeApiKeyRequest* request,
                            v1::ApiKey* response) override;

 private:
  ServerContext ctx_;
};

class ModelsService final : public v1::Models::Service {
 public:
  explicit ModelsService(ServerContext ctx) : ctx_(ctx) {}
  grpc::Status RegisterModel(grpc::ServerContext* context,
                             const v1::RegisterModelRequest* request,
                             v1::Model* response) override;
  grpc::Status GetModel(grpc::ServerContext* context,
                        const v1::GetModelRequest* request,
                        v1::Model* response) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;

 private:
  ServerContext ctx_;
};

// Checks `name` and the folder at `path` and records the base model.
// INVALID_ARGUMENT / ALREADY_EXISTS as Models.RegisterModel.
absl::StatusOr<v1::Model> RegisterBaseModel(store::Store& store,
                                            const std::string& name,
                                            const std::string& path);

// Deletes blob `sha256` unless a record names it (asked once no blob
// commit is in flight); for a blob whose record was refused or deleted.
// Logs a failure: a blob left behind goes at the next start.
// REQUIRES: the caller holds no committed BlobStore::Writer.
void RemoveBlobIfUnreferenced(const ServerContext& ctx, const std::string& sha256);

// Sends each file as a header (name, size, SHA-256) then its bytes.
absl::Status SendFiles(const ServerContext& ctx,
                       const google::protobuf::RepeatedPtrField<v1::ResultFile>& files,
                       grpc::ServerWriter<v1::DownloadChunk>* writer);

// Streams the file at `path` through `write(chunk)` in chunks of
// `chunk_bytes`. Errors: NOT_FOUND, INTERNAL, CANCELLED (write refused).
absl::Status StreamFile(const std::string& path, int64_t chunk_bytes,
                        const std::function<bool(absl::string_view)>& write);

// StreamFile into a server stream of messages with a `data` bytes field.
template <typename Chunk>
absl::Status StreamFileTo(const ServerContext& ctx, const std::string& path,
                          grpc::ServerWriter<Chunk>* writer) {
  return StreamFile(path, ctx.options.chunk_bytes, [&](absl::string_view data) {
    Chunk c;
    c.set_data(std::string(data));
    return writer->Write(c);
  });
}

}  // namespace lathe

#endif  // LATHE_SERVER_SERVICES_H_
