// lathe-worker's agent: keeps one stream open to lathed, reports what this
// worker is doing, runs the attempts the server assigns (through the engine)
// and uploads their results. Stateless across restarts: whatever it loses,
// the server re-assigns.
//
// Thread-safe: Run() on one thread, Stop() from any (e.g. a signal thread).
#ifndef LATHE_WORKER_AGENT_AGENT_H_
#define LATHE_WORKER_AGENT_AGENT_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "lathe/v1/worker.grpc.pb.h"

namespace lathe::worker {

struct AgentOptions {
  std::string server = "127.0.0.1:7070";  // lathed
  std::string worker_id;                  // default: hostname-pid
  std::string work_dir = ".lathe-worker"; // per-attempt files
  std::string token;                      // lathed's worker token
  ChannelTls tls;                         // CA, client certificate, or insecure
  absl::Duration heartbeat = absl::Seconds(1);
  absl::Duration drain_timeout = absl::Seconds(60);
  // Read base models from the server's path when it is readable here
  // (false: always fetch them from lathed into the cache).
  bool use_local_models = true;
};

class Agent {
 public:
  // INVALID_ARGUMENT naming the option when a TLS file cannot be used.
  static absl::StatusOr<std::unique_ptr<Agent>> Create(AgentOptions options);
  ~Agent();

  // Serves until Stop(): connects, reconnects with backoff when the stream
  // breaks, and reports state on every heartbeat.
  void Run();
  // Asks Run() to return. A running attempt checkpoints, uploads the
  // checkpoint and hands the job back first (up to `drain_timeout`); a
  // second Stop() returns at once.
  void Stop();

 private:
  explicit Agent(AgentOptions options, std::shared_ptr<grpc::Channel> channel);

  struct Attempt;  // one assigned attempt and its thread

  v1::WorkerReport BuildReport();
  // True when Run() should return: aborted, or stopping with no attempt
  // left (or the drain deadline passed).
  bool Drained();
  void Apply(const v1::WorkerDirective& d);
  void StartAttempt(const v1::Assignment& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunAttempt(Attempt* attempt);
  void Emit(Attempt* attempt, v1::JobEvent event);
  bool FetchFile(Attempt* attempt, const std::string& file_id,
                 const std::string& path, std::string* error);
  bool UploadResult(Attempt* attempt, const std::string& path,
                    const std::string& name, int64_t checkpoint_step,
                    std::string* error);
  // A context carrying the worker token.
  std::unique_ptr<grpc::ClientContext> NewContext() const;
  // Uploads a checkpoint's files and queues its report.
  bool UploadCheckpoint(Attempt* attempt, int64_t step, const std::string& dir,
                        const std::vector<std::string>& files,
                        const v1::CheckpointMetrics& metrics, std::string* error);
  // Fetches the files of `checkpoint` into `dir`.
  bool FetchCheckpoint(Attempt* attempt, const v1::Checkpoint& checkpoint,
                       const std::string& dir, std::string* error);
  // The base model's folder: the server's path when readable here, else a
  // cache under work_dir/models/<content sha256>, fetched file by file and
  // checked against the registered hashes.
  bool ResolveModel(Attempt* attempt, std::string* dir, std::string* error);

  const AgentOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Worker::Stub> stub_;

  absl::Mutex mu_;
  std::unique_ptr<Attempt> attempt_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;  // report before the heartbeat
  std::atomic<bool> stopping_{false};  // no new work; drain the attempt
  std::atomic<bool> abort_{false};     // return at once
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace lathe::worker

#endif  // LATHE_WORKER_AGENT_AGENT_H_
