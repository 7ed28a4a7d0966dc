// The gRPC services of lathed: thin adapters over the transport-free
// operations (server/operations/). Each handler authenticates the call
// (server/grpc_auth.h), calls one operation, converts its status in one
// place (ToGrpcStatus) and writes the response; streaming handlers only
// read or write their stream. All use the synchronous API (a stream holds a
// thread while it runs) except WatchJob, whose streams are idle most of
// their lives: it uses the callback API and the event feed's wake-ups, and
// holds no thread while idle.
#ifndef LATHE_SERVER_SERVICES_H_
#define LATHE_SERVER_SERVICES_H_

#include <atomic>
#include <cstdint>

#include "lathe/v1/admin.grpc.pb.h"
#include "lathe/v1/files.grpc.pb.h"
#include "lathe/v1/fine_tuning.grpc.pb.h"
#include "lathe/v1/models.grpc.pb.h"
#include "lathe/v1/webhooks.grpc.pb.h"
#include "lathe/v1/worker.grpc.pb.h"
#include "server/auth.h"
#include "server/operations/operations.h"

namespace lathe {

// What every service borrows; all must outlive the services.
struct ServiceDeps {
  const Authenticator* auth;
  Operations* ops;
  int64_t chunk_bytes;  // download chunks (OperationOptions::chunk_bytes)
  // Set when lathed is shutting down: long-lived streams end.
  std::atomic<bool>* shutting_down;
};

class FilesService final : public v1::Files::Service {
 public:
  explicit FilesService(ServiceDeps deps) : deps_(deps) {}
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
  const ServiceDeps deps_;
};

class FineTuningService final
    : public v1::FineTuning::WithCallbackMethod_WatchJob<
          v1::FineTuning::Service> {
 public:
  explicit FineTuningService(ServiceDeps deps) : deps_(deps) {}
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
  // Follows the job (JobOps::WatchJob) until it ends, the key is revoked,
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
  const ServiceDeps deps_;
};

class WorkerService final : public v1::Worker::Service {
 public:
  explicit WorkerService(ServiceDeps deps) : deps_(deps) {}
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
  const ServiceDeps deps_;
};

class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(ServiceDeps deps) : deps_(deps) {}
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
  const ServiceDeps deps_;
};

class ModelsService final : public v1::Models::Service {
 public:
  explicit ModelsService(ServiceDeps deps) : deps_(deps) {}
  grpc::Status RegisterModel(grpc::ServerContext* context,
                             const v1::RegisterModelRequest* request,
                             v1::Model* response) override;
  grpc::Status GetModel(grpc::ServerContext* context,
                        const v1::GetModelRequest* request,
                        v1::Model* response) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status DeleteModel(grpc::ServerContext* context,
                           const v1::DeleteModelRequest* request,
                           v1::DeleteModelResponse* response) override;

 private:
  const ServiceDeps deps_;
};

class WebhooksService final : public v1::Webhooks::Service {
 public:
  explicit WebhooksService(ServiceDeps deps) : deps_(deps) {}
  grpc::Status CreateWebhook(grpc::ServerContext* context,
                             const v1::CreateWebhookRequest* request,
                             v1::Webhook* response) override;
  grpc::Status ListWebhooks(grpc::ServerContext* context,
                            const v1::ListWebhooksRequest* request,
                            v1::ListWebhooksResponse* response) override;
  grpc::Status DeleteWebhook(grpc::ServerContext* context,
                             const v1::DeleteWebhookRequest* request,
                             v1::DeleteWebhookResponse* response) override;
  grpc::Status ListWebhookDeliveries(
      grpc::ServerContext* context,
      const v1::ListWebhookDeliveriesRequest* request,
      v1::ListWebhookDeliveriesResponse* response) override;

 private:
  const ServiceDeps deps_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_SERVICES_H_
