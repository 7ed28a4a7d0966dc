#include "scheduler/lease_table.h"

#include <algorithm>


namespace lathe::scheduler {

void LeaseTable::Grant(const std::string& job_id, int32_t attempt,
                       const std::string& worker_id, absl::Time now) {
  leases_[job_id] = Lease{job_id, attempt, worker_id, now + ttl_};
}

bool LeaseTable::Renew(const std::string& job_id, int32_t attempt,
                       absl::Time now) {
  auto it = leases_.find(job_id);
  if (it == leases_.end() || it->second.attempt != attempt) return false;
  it->second.deadline = now + ttl_;
  return true;
}

void LeaseTable::Release(const std::string& job_id) { leases_.erase(job_id); }

std::optional<LeaseTable::Lease> LeaseTable::Get(const std::string& job_id) const {
  auto it = leases_.find(job_id);
  if (it == leases_.end()) return std::nullopt;
  return it->second;
}

std::vector<LeaseTable::Lease> LeaseTable::Expired(absl::Time now) const {
  std::vector<Lease> out;
  for (const auto& [job_id, lease] : leases_) {
    if (lease.deadline < now) out.push_back(lease);
  }
  return out;
}

bool LeaseTable::TakeIfExpired(const std::string& job_id, int32_t attempt,
                               absl::Time now) {
  auto it = leases_.find(job_id);
  if (it == leases_.end() || it->second.attempt != attempt ||
      it->second.deadline >= now) {
    return false;
  }
  leases_.erase(it);
  return true;
}

absl::Duration RetryBackoff(int attempt, absl::Duration base,
                            absl::Duration cap) {
  absl::Duration d = base;
  for (int i = 1; i < attempt && d < cap; ++i) d *= 2;
  return std::min(d, cap);
}

}  // namespace lathe::scheduler
