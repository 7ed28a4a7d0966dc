#include "scheduler/lease_table.h"

#include <algorithm>

namespace lathe::scheduler {

void LeaseTable::Grant(const std::string& job_id, int32_t attempt,
                       const std::string& worker_id, absl::Time now, int rank) {
  std::map<int, Lease>& ranks = leases_[job_id];
  if (!ranks.empty() && ranks.begin()->second.attempt != attempt) {
    ranks.clear();
  }
  ranks[rank] = Lease{job_id, attempt, rank, worker_id, now + ttl_};
}

bool LeaseTable::Renew(const std::string& job_id, int32_t attempt,
                       absl::Time now, int rank) {
  auto job = leases_.find(job_id);
  if (job == leases_.end()) return false;
  auto it = job->second.find(rank);
  if (it == job->second.end() || it->second.attempt != attempt) return false;
  it->second.deadline = now + ttl_;
  return true;
}

void LeaseTable::Release(const std::string& job_id) { leases_.erase(job_id); }

void LeaseTable::ReleaseRank(const std::string& job_id, int rank) {
  auto job = leases_.find(job_id);
  if (job == leases_.end()) return;
  job->second.erase(rank);
  if (job->second.empty()) leases_.erase(job);
}

std::optional<LeaseTable::Lease> LeaseTable::Get(const std::string& job_id,
                                                 int rank) const {
  auto job = leases_.find(job_id);
  if (job == leases_.end()) return std::nullopt;
  auto it = job->second.find(rank);
  if (it == job->second.end()) return std::nullopt;
  return it->second;
}

std::vector<LeaseTable::Lease> LeaseTable::Expired(absl::Time now) const {
  std::vector<Lease> out;
  for (const auto& [job_id, ranks] : leases_) {
    for (const auto& [rank, lease] : ranks) {
      if (lease.deadline < now) out.push_back(lease);
    }
  }
  return out;
}

bool LeaseTable::TakeIfExpired(const std::string& job_id, int32_t attempt,
                               absl::Time now, int rank) {
  auto job = leases_.find(job_id);
  if (job == leases_.end()) return false;
  auto it = job->second.find(rank);
  if (it == job->second.end() || it->second.attempt != attempt ||
      it->second.deadline >= now) {
    return false;
  }
  job->second.erase(it);
  if (job->second.empty()) leases_.erase(job);
  return true;
}

absl::Duration RetryBackoff(int attempt, absl::Duration base,
                            absl::Duration cap) {
  absl::Duration d = base;
  for (int i = 1; i < attempt && d < cap; ++i) d *= 2;
  return std::min(d, cap);
}

}  // namespace lathe::scheduler
