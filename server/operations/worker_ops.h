// The Worker operations: a worker's reports (Coordinator::HandleReport),
// the files an attempt fetches (its job's data, its checkpoints, its base
// model) and the results it uploads (a ResultUpload each). Every fetch and
// upload names the job's current attempt: a superseded attempt's are
// FAILED_PRECONDITION.
//
// Thread-safe.
#ifndef LATHE_SERVER_OPERATIONS_WORKER_OPS_H_
#define LATHE_SERVER_OPERATIONS_WORKER_OPS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lathe/v1/worker.pb.h"
#include "server/auth.h"
#include "server/operations/deps.h"
#include "server/operations/result_upload.h"

namespace lathe {

// The host of a transport peer address as a TCP connect takes it:
// "ipv4:10.0.0.7:42076" -> "10.0.0.7", "ipv6:[::1]:5" (or its URI-escaped
// "ipv6:%5B::1%5D:5") -> "[::1]", a Unix socket's peer -> "127.0.0.1"; ""
// for any other.
std::string PeerHost(absl::string_view peer);

class WorkerOps {
 public:
  // What `deps` points to must outlive this.
  explicit WorkerOps(const OperationDeps& deps) : deps_(deps) {}

  // One report; the directive to answer it with. `peer_host` is the host
  // the worker's stream comes from (PeerHost): where a gang's rank 0
  // listens when it reports its rendezvous as ":port". INVALID_ARGUMENT
  // without a worker id; a store error ends the worker's stream (it
  // reconnects and reports again).
  absl::StatusOr<v1::WorkerDirective> Report(
      const WorkerCaller& worker, const v1::WorkerReport& report,
      const std::string& peer_host = "") const;
  // The same for a worker that may run several attempts: the directives to
  // answer it with, one per attempt and one more with an assignment when a
  // job is packed onto it (Coordinator::HandleReports).
  absl::StatusOr<std::vector<v1::WorkerDirective>> ReportAll(
      const WorkerCaller& worker, const v1::WorkerReport& report,
      const std::string& peer_host = "") const;
  // The worker's stream ended.
  void Disconnected(const WorkerCaller& worker,
                    const std::string& worker_id) const;

  // The paths of what an attempt fetches. NOT_FOUND when the job has no
  // such file.
  absl::StatusOr<std::string> FetchFile(
      const WorkerCaller& worker, const v1::FetchFileRequest& request) const;
  absl::StatusOr<std::string> FetchCheckpointFile(
      const WorkerCaller& worker,
      const v1::FetchCheckpointFileRequest& request) const;
  absl::StatusOr<std::string> FetchModelFile(
      const WorkerCaller& worker,
      const v1::FetchModelFileRequest& request) const;

  std::unique_ptr<ResultUpload> StartResultUpload(
      const WorkerCaller& worker) const;

 private:
  // `attempt` is the current attempt of job `job_id`.
  absl::Status CheckAttempt(const std::string& job_id, int32_t attempt) const;

  const OperationDeps deps_;
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_WORKER_OPS_H_
