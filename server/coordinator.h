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
#include "scheduler/scheduler.h"
#include "server/store/store.h"

namespace lathe {

struct CoordinatorOptions {
  absl::Duration lease_ttl = absl::Seconds(15);
  int max_attempts = 3;
  absl::Duration retry_backoff_base = absl::Seconds(2);
  absl::Duration retry_backoff_cap = absl::Minutes(5);
  double base_learning_rate = 2e-4;  // x learning_rate_multiplier
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

  // Checks that `attempt` is the current attempt of a live job (for file
  // fetches and result uploads). FAILED_PRECONDITION otherwise.
  absl::Status CheckCurrentAttempt(const std::string& job_id, int32_t attempt);

  // Expires overdue leases: the attempt fails and the job requeues with
  // backoff (or fails after max_attempts). Returns how many expired.
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

  store::Store& store_;
  const CoordinatorOptions options_;

  absl::Mutex mu_;
  scheduler::LeaseTable leases_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lathe

#endif  // LATHE_SERVER_COORDINATOR_H_
