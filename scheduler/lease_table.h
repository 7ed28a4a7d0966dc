// Leases on running attempts and retry backoff, as pure logic: no gRPC, no
// SQLite, time passed in. (Placement is in placement.h.)
#ifndef LATHE_SCHEDULER_LEASE_TABLE_H_
#define LATHE_SCHEDULER_LEASE_TABLE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace lathe::scheduler {

// A lease per rank of a running attempt (a job on one worker has rank 0
// only; a gang of N workers has ranks 0..N-1), judged on the server's
// clock. Not thread-safe: the owner serialises calls.
class LeaseTable {
 public:
  struct Lease {
    std::string job_id;
    int32_t attempt = 0;
    int rank = 0;
    std::string worker_id;
    absl::Time deadline;
  };

  explicit LeaseTable(absl::Duration ttl) : ttl_(ttl) {}

  // Starts (or replaces) the lease of `job_id`'s attempt at `rank`. Leases
  // the job holds for another attempt are dropped: a new attempt
  // supersedes them.
  void Grant(const std::string& job_id, int32_t attempt,
             const std::string& worker_id, absl::Time now, int rank = 0);
  // Extends the lease of `rank` if `attempt` holds it; false otherwise
  // (superseded or unknown attempt, or a rank without a lease).
  bool Renew(const std::string& job_id, int32_t attempt, absl::Time now,
             int rank = 0);
  // Releases every rank's lease of `job_id`.
  void Release(const std::string& job_id);
  // Releases the lease of `job_id`'s `rank` only.
  void ReleaseRank(const std::string& job_id, int rank);
  std::optional<Lease> Get(const std::string& job_id, int rank = 0) const;
  // Every lease (each rank's) whose deadline is before `now`.
  std::vector<Lease> Expired(absl::Time now) const;
  // Removes the lease of `job_id`'s `rank` if `attempt` holds it and it is
  // expired at `now` (a renewal since Expired() keeps it); true if it did.
  bool TakeIfExpired(const std::string& job_id, int32_t attempt, absl::Time now,
                     int rank = 0);

 private:
  absl::Duration ttl_;
  // job id -> rank -> lease; every rank's of one attempt.
  std::map<std::string, std::map<int, Lease>> leases_;
};

// Delay before retry number `attempt` (1-based) of a job whose attempt was
// lost: base * 2^(attempt-1), capped.
absl::Duration RetryBackoff(int attempt, absl::Duration base,
                            absl::Duration cap);

}  // namespace lathe::scheduler

#endif  // LATHE_SCHEDULER_LEASE_TABLE_H_
