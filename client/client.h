// The Lathe client library: every public RPC as a blocking call returning
// absl::Status. The CLI is built on it and holds no private shortcut.
//
// Thread-safe (the gRPC channel and stubs are).
#ifndef LATHE_CLIENT_CLIENT_H_
#define LATHE_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "lathe/v1/admin.grpc.pb.h"
#include "lathe/v1/files.grpc.pb.h"
#include "lathe/v1/fine_tuning.grpc.pb.h"
#include "lathe/v1/models.grpc.pb.h"
#include "lathe/v1/webhooks.grpc.pb.h"

namespace lathe {

class Client {
 public:
  // A client of lathed at `target` (host:port) over TLS as `tls` says;
  // `api_key` identifies the caller (and so its project). Connects lazily.
  // INVALID_ARGUMENT naming the option when a TLS file cannot be used.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target,
                                                         const std::string& api_key,
                                                         const ChannelTls& tls);
  // The channel settings Connect uses (message size, reconnect backoff),
  // for callers that make their own channel with MakeChannel.
  static grpc::ChannelArguments ChannelArgs();
  // Over an existing channel (e.g. one made by MakeChannel).
  Client(std::shared_ptr<grpc::Channel> channel, const std::string& api_key);

  // Called with bytes done and the total (0 if unknown).
  using Progress = std::function<void(int64_t done, int64_t total)>;

  // Streams a local file in 1 MiB chunks with its size and SHA-256.
  absl::StatusOr<v1::File> UploadFile(const std::string& path,
                                      const std::string& purpose,
                                      const Progress& progress);
  absl::StatusOr<v1::File> GetFile(const std::string& file_id);
  absl::StatusOr<v1::ListFilesResponse> ListFiles(const v1::ListFilesRequest& r);
  absl::Status DeleteFile(const std::string& file_id);
  // Writes the file's content to `path` (atomically), checked against its
  // SHA-256.
  absl::Status DownloadFile(const std::string& file_id, const std::string& path,
                            const Progress& progress);

  absl::StatusOr<v1::Job> CreateJob(const v1::CreateJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& r);
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id);
  absl::StatusOr<v1::ListJobEventsResponse> ListJobEvents(
      const v1::ListJobEventsRequest& r);
  absl::StatusOr<v1::Job> PauseJob(const std::string& job_id);
  absl::StatusOr<v1::Job> ResumeJob(const std::string& job_id);
  absl::StatusOr<v1::ListJobCheckpointsResponse> ListJobCheckpoints(
      const std::string& job_id);

  // Operator calls (need an admin key).
  absl::StatusOr<v1::ApiKey> CreateApiKey(const v1::CreateApiKeyRequest& r);
  absl::StatusOr<v1::ListApiKeysResponse> ListApiKeys(const std::string& project);
  absl::StatusOr<v1::ApiKey> RevokeApiKey(const std::string& key_id);

  absl::StatusOr<v1::Model> RegisterModel(const std::string& name,
                                          const std::string& path);
  absl::StatusOr<v1::Model> GetModel(const std::string& model_id);
  absl::StatusOr<v1::ListModelsResponse> ListModels();
  absl::Status DeleteModel(const std::string& model_id);

  // The project's webhooks. CreateWebhook's answer carries the secret
  // (the only time it is shown).
  absl::StatusOr<v1::Webhook> CreateWebhook(const v1::CreateWebhookRequest& r);
  absl::StatusOr<v1::ListWebhooksResponse> ListWebhooks(
      const v1::ListWebhooksRequest& r);
  absl::Status DeleteWebhook(const std::string& webhook_id);
  absl::StatusOr<v1::ListWebhookDeliveriesResponse> ListWebhookDeliveries(
      const v1::ListWebhookDeliveriesRequest& r);

  // Follows a job from the event after `after` ("" = the first) until its
  // final event, calling `on_update` for each. If the stream breaks
  // (UNAVAILABLE: server restart, network), re-attaches from the last event
  // seen, so nothing is missed or repeated, until `deadline`.
  absl::Status WatchJob(
      const std::string& job_id, const std::string& after,
      const std::function<void(const v1::WatchJobResponse&)>& on_update,
      absl::Time deadline = absl::InfiniteFuture());

  // Downloads the adapter's files into `out_dir` (created), each checked
  // against its SHA-256 and renamed into place only when whole. Returns the
  // paths written.
  absl::StatusOr<std::vector<std::string>> DownloadAdapter(
      const std::string& job_id, const std::string& out_dir,
      const Progress& progress);
  // As DownloadAdapter, for checkpoint `step` (0 = the latest).
  absl::StatusOr<std::vector<std::string>> DownloadCheckpoint(
      const std::string& job_id, int64_t step, const std::string& out_dir,
      const Progress& progress);

 private:
  // Adds the caller's identity to a call.
  void Decorate(grpc::ClientContext& ctx) const;
  template <typename Response, typename Call>
  absl::StatusOr<Response> Unary(Call call) const;

  std::string api_key_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Files::Stub> files_;
  std::unique_ptr<v1::FineTuning::Stub> jobs_;
  std::unique_ptr<v1::Models::Stub> models_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<v1::Webhooks::Stub> webhooks_;
};

}  // namespace lathe

#endif  // LATHE_CLIENT_CLIENT_H_
