// lathe-worker's agent: keeps one stream open to lathed, reports what this
// worker is doing, runs the attempts the server assigns (through the engine)
// and uploads their results. Stateless across restarts: whatever it loses,
// the server re-assigns.
//
// Thread-safe: Run() on one thread, Stop() from any (e.g. a signal thread).
#ifndef LATHE_WORKER_AGENT_AGENT_H_
#define LATHE_WORKER_AGENT_AGENT_H_

#include <atomic>
#include <filesystem>
#include <functional>
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
  // The device this worker trains on and reports: auto, cpu, cuda or
  // cuda:N (engine/device/device_inventory.h), for the engine's run spec.
  std::string device = "auto";
  absl::Duration heartbeat = absl::Seconds(1);
  absl::Duration drain_timeout = absl::Seconds(60);
  // Read base models from the server's path when it is readable here
  // (false: always fetch them from lathed into the cache).
  bool use_local_models = true;
  // How long a transfer that failed for a passing reason (lathed
  // restarting or unreachable, or unable to store the bytes for now) is
  // tried again. A checkpoint is soon given up: training goes on and the
  // next one tries again. The inputs and the final adapter wait longer, as
  // the attempt cannot go on without them.
  absl::Duration checkpoint_patience = absl::Seconds(5);
  absl::Duration transfer_patience = absl::Minutes(10);
  // Multi-worker jobs (torch.distributed). As rank 0 this worker hosts the
  // attempt's c10d TCPStore on rendezvous_port (0: any free port) and
  // reports "rendezvous_host:port" to lathed (an empty host: lathed uses
  // the address it sees this worker's stream come from); Gloo's pairs
  // listen on rendezvous_host too (empty: GLOO_SOCKET_IFNAME, else the
  // address of this host's name). rendezvous_timeout bounds the wait for
  // the gang to gather and each collective.
  std::string rendezvous_host;
  int rendezvous_port = 0;
  absl::Duration rendezvous_timeout = absl::Minutes(3);
  // How many attempts this worker runs at once. Above 1, lathed packs LoRA
  // jobs of one base onto it, trained in this process over one copy of the
  // base (engine/model/shared_base.h); it still runs a gang's rank, a full
  // fine-tuning or a merge alone.
  int max_attempts = 1;
};

class Agent {
 public:
  // INVALID_ARGUMENT naming the option when a TLS file cannot be used or
  // `device` is not a device; FAILED_PRECONDITION naming `device` when this
  // machine does not have it.
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
  Agent(AgentOptions options, std::shared_ptr<grpc::Channel> channel,
        std::vector<v1::Device> devices);

  struct Attempt;  // one assigned attempt and its thread

  v1::WorkerReport BuildReport();
  // True when Run() should return: aborted, or stopping with no attempt
  // left (or the drain deadline passed).
  bool Drained();
  void Apply(const v1::WorkerDirective& d);
  void StartAttempt(const v1::Assignment& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunAttempt(Attempt* attempt);
  void Emit(Attempt* attempt, v1::JobEvent event);
  // Runs `transfer` until it succeeds, fails for good (e.g. the attempt is
  // superseded), `patience` runs out, or the attempt is given up (GivingUp).
  // The first passing failure is reported as a warning event naming `what`.
  absl::Status Retry(Attempt* attempt, const std::string& what,
                     absl::Duration patience,
                     const std::function<absl::Status()>& transfer);
  // True when retrying is pointless: the server dropped the attempt, or the
  // agent is aborting or past its drain deadline.
  bool GivingUp(Attempt* attempt);
  bool FetchFile(Attempt* attempt, const std::string& file_id,
                 const std::string& path, std::string* error);
  // Uploads a result file (a checkpoint's when `checkpoint_step` > 0),
  // retrying passing failures for up to `patience`.
  bool UploadResult(Attempt* attempt, const std::string& path,
                    const std::string& name, int64_t checkpoint_step,
                    absl::Duration patience, std::string* error);
  // One try of UploadResult.
  absl::Status UploadOnce(Attempt* attempt, const std::string& path,
                          const std::string& name, int64_t bytes,
                          const std::string& sha256, int64_t checkpoint_step);
  // Waits until `until` before the next try of a failed call, or only
  // until lathed can be reached again when it could not be; stops early
  // when `give_up` says so.
  void AwaitLathed(absl::Time until, const std::function<bool()>& give_up);
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
  // Fetches `model`'s files (FetchModelFile; `input_model` for a merge
  // input) into `dir`, each checked against its registered hash.
  bool FetchModelFiles(Attempt* attempt, const v1::Model& model,
                       const std::string& input_model,
                       const std::filesystem::path& dir, std::string* error);
  // A merge job's attempt (method.type "merge"): fetches the base, the
  // inputs and greedy_soup's validation file into `dir`, merges, uploads the
  // model folder; sets `outcome`.
  void RunMergeAttempt(Attempt* attempt, const std::filesystem::path& dir,
                       v1::AttemptOutcome& outcome);
  // A data analysis job's attempt (method.type "analyze"): fetches the
  // base and the files, analyses, uploads report.jsonl and selected.jsonl.
  void RunAnalyzeAttempt(Attempt* attempt, const std::filesystem::path& dir,
                         v1::AttemptOutcome& outcome);
  // Uploads every file of `dir` as the attempt's result; false with
  // `error` set when one fails or there is none.
  bool UploadResultFolder(Attempt* attempt, const std::filesystem::path& dir,
                          v1::AttemptOutcome& outcome, std::string* error);

  const AgentOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Worker::Stub> stub_;
  // The devices last read (kept when a later reading fails); Run()'s
  // thread only.
  std::vector<v1::Device> devices_;

  absl::Mutex mu_;
  // The attempts running, in the order they were assigned (at most
  // options_.max_attempts).
  std::vector<std::unique_ptr<Attempt>> attempts_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;  // report before the heartbeat
  std::atomic<bool> stopping_{false};  // no new work; drain the attempt
  std::atomic<bool> abort_{false};     // return at once
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace lathe::worker

#endif  // LATHE_WORKER_AGENT_AGENT_H_
