// The domain side of the worker protocol: turns a worker's report of its
// state into durable changes (events, progress, outcomes) and answers with
// the state the server wants (run this attempt, stop that one, lease
// deadline). Also expires leases of silent workers and requeues their jobs.
//
// Knows nothing of gRPC. Thread-safe: reports from many worker streams and
// the lease sweep serialise on `mu_`.
#ifndef LATHE_SERVER_COORDINATOR_H_
#define LATHE_SERVER_COORDINATOR_H_

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lathe/v1/worker.pb.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "scheduler/lease_table.h"
#include "scheduler/placement.h"
#include "server/job_request.h"
#include "server/store/store.h"

namespace lathe {

struct CoordinatorOptions {
  absl::Duration lease_ttl = absl::Seconds(15);
  int max_attempts = 3;
  absl::Duration retry_backoff_base = absl::Seconds(2);
  absl::Duration retry_backoff_cap = absl::Minutes(5);
  // A job stored by an older lathed is brought up to the settings the
  // worker expects (FillJobDefaults) when it is assigned.
  JobDefaults job_defaults;
  // A placement plan is reused for this long before it is recomputed.
  absl::Duration replan_interval = absl::Milliseconds(200);
  scheduler::SchedulingPolicy policy;
};

class Coordinator {
 public:
  // `store` must outlive the Coordinator. Running jobs found in the store
  // (lathed restarted) get a fresh lease so their worker can report back.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      store::Store& store, CoordinatorOptions options);

  // Handles one report; returns the directive to send back.
  // INVALID_ARGUMENT if the report has no worker id.
  absl::StatusOr<v1::WorkerDirective> HandleReport(const v1::WorkerReport& r);

  // Cancel: queued, paused (or validating_files) -> cancelled; running ->
  // cancelling (the attempt is then told to stop); cancelling stays.
  // FAILED_PRECONDITION once the job has finished.
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id);
  // Pause: queued or running -> paused (a running attempt is then told to
  // checkpoint and stop). Resume: paused -> queued; while the attempt is
  // still writing its pause checkpoint the job stays paused with
  // resume_requested set and is queued as soon as the attempt stops (or
  // its worker is lost); pausing again cancels that request.
  // FAILED_PRECONDITION from any other state.
  absl::StatusOr<v1::Job> PauseJob(const std::string& job_id);
  absl::StatusOr<v1::Job> ResumeJob(const std::string& job_id);

  // Forgets a worker whose stream ended (its running attempt, if any, keeps
  // its lease until it expires or the worker reconnects).
  void WorkerDisconnected(const std::string& worker_id);

  // Checks that `attempt` is the current attempt of a live job (for file
  // fetches and result uploads). FAILED_PRECONDITION otherwise.
  absl::Status CheckCurrentAttempt(const std::string& job_id, int32_t attempt);

  // Records an uploaded result file: one of checkpoint `checkpoint_step`'s,
  // or of the adapter when it is 0. Checked and written under the lock that
  // lease expiry and assignment take, so the upload of an attempt that lost
  // its lease meanwhile is never recorded. FAILED_PRECONDITION when
  // `attempt` is not current (or the checkpoint is already recorded).
  absl::Status RecordResultFile(const std::string& job_id, int32_t attempt,
                                int64_t checkpoint_step,
                                const v1::ResultFile& file);

  // The queue position of each of `project`'s queued jobs: 1 + how many
  // of the project's queued jobs the scheduler would place before it
  // (scheduler::RankOrder). Other projects' jobs are not counted.
  absl::StatusOr<absl::flat_hash_map<std::string, int64_t>> QueuePositions(
      const std::string& project);
  // Sets `job`'s queue_position (QueuePositions; 0 unless queued).
  absl::Status FillQueuePosition(v1::Job& job);

  // Expires overdue leases: the attempt fails and the job requeues with
  // backoff (or fails once max_attempts attempts have failed). Returns how
  // many expired.
  int SweepExpiredLeases(absl::Time now);

 private:
  Coordinator(store::Store& store, CoordinatorOptions options)
      : store_(store), options_(options), leases_(options.lease_ttl) {}

  absl::Status HandleAttempt(const v1::WorkerReport& r,
                             v1::WorkerDirective& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RecordOutcome(const v1::Job& job, const v1::RunningAttempt& a)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MaybeAssign(const v1::WorkerReport& r, v1::WorkerDirective& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True while `job`'s current attempt may still report: running,
  // cancelling, or paused with the attempt's lease not yet released.
  bool AttemptIsLive(const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckCurrentAttemptLocked(const std::string& job_id,
                                         int32_t attempt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Recomputes pending_ from the queue, the fleet and running jobs.
  absl::Status Replan(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  store::Store& store_;
  const CoordinatorOptions options_;

  absl::Mutex mu_;
  scheduler::LeaseTable leases_ ABSL_GUARDED_BY(mu_);
  // Connected workers as the scheduler sees them.
  absl::flat_hash_map<std::string, scheduler::WorkerInfo> fleet_
      ABSL_GUARDED_BY(mu_);
  // The last plan: worker id -> job id it should take when it reports idle.
  absl::flat_hash_map<std::string, std::string> pending_ ABSL_GUARDED_BY(mu_);
  absl::Time plan_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Set when a worker joins, leaves or becomes idle, or a job is requeued:
  // the plan is recomputed on the next idle report.
  bool replan_ ABSL_GUARDED_BY(mu_) = true;
  // Jobs already told that no connected worker can run them.
  absl::flat_hash_set<std::string> warned_unplaceable_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lathe

#endif  // LATHE_SERVER_COORDINATOR_H_
