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
  // Every lease whose deadline is before `now`.
  std::vector<Lease> Expired(absl::Time now) const;
  // Removes `job_id`'s lease if `attempt` holds it and it is expired at
  // `now` (a renewal since Expired() keeps it); true if it did.
  bool TakeIfExpired(const std::string& job_id, int32_t attempt,
                     absl::Time now);

 private:
  absl::Duration ttl_;
  std::map<std::string, Lease> leases_;
};

// Delay before retry number `attempt` (1-based) of a job whose attempt was
// lost: base * 2^(attempt-1), capped.
absl::Duration RetryBackoff(int attempt, absl::Duration base,
                            absl::Duration cap);

}  // namespace lathe::scheduler

#endif  // LATHE_SCHEDULER_LEASE_TABLE_H_
