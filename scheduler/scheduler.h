// Placement and leases, as pure logic: no gRPC, no SQLite, time passed in.
// The server adapts this to the store and the worker streams.
#ifndef LATHE_SCHEDULER_SCHEDULER_H_
#define LATHE_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace lathe::scheduler {

struct QueuedJob {
  std::string job_id;
  int64_t enqueue_order = 0;  // smaller = earlier
  absl::Time not_before = absl::InfinitePast();  // retry backoff
};

struct IdleWorker {
  std::string worker_id;
};

// The job `worker` should run: the first placement of PlanRound
// (placement.h) for this one idle worker, with every job needing no memory,
// of normal priority and of one project, so in effect the earliest queued
// job whose backoff has passed at `now`, or nothing. Kept only until the
// coordinator calls PlanRound itself.
std::optional<std::string> PickJob(const IdleWorker& worker,
                                   const std::vector<QueuedJob>& queue,
                                   absl::Time now);

// A lease per running attempt, judged on the server's clock. Not
// thread-safe: the owner serialises calls.
class LeaseTable {
 public:
  struct Lease {
    std::string job_id;
    int32_t attempt = 0;
    std::string worker_id;
    absl::Time deadline;
  };

  explicit LeaseTable(absl::Duration ttl) : ttl_(ttl) {}

  // Starts (or replaces) the lease of `job_id`'s attempt.
  void Grant(const std::string& job_id, int32_t attempt,
             const std::string& worker_id, absl::Time now);
  // Extends the lease if `attempt` holds it; false otherwise (superseded or
  // unknown attempt).
  bool Renew(const std::string& job_id, int32_t attempt, absl::Time now);
  void Release(const std::string& job_id);
  std::optional<Lease> Get(const std::string& job_id) const;
  // Removes and returns every lease whose deadline is before `now`.
  std::vector<Lease> TakeExpired(absl::Time now);

 private:
  absl::Duration ttl_;
  std::map<std::string, Lease> leases_;
};

// Delay before retry number `attempt` (1-based) of a job whose attempt was
// lost: base * 2^(attempt-1), capped.
absl::Duration RetryBackoff(int attempt, absl::Duration base,
                            absl::Duration cap);

}  // namespace lathe::scheduler

#endif  // LATHE_SCHEDULER_SCHEDULER_H_
