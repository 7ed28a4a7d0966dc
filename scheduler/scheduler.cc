#include "scheduler/scheduler.h"

#include <algorithm>

#include "scheduler/placement.h"

namespace lathe::scheduler {

std::optional<std::string> PickJob(const IdleWorker& worker,
                                   const std::vector<QueuedJob>& queue,
                                   absl::Time now) {
  std::vector<JobRequest> requests;
  requests.reserve(queue.size());
  for (const QueuedJob& q : queue) {
    JobRequest& r = requests.emplace_back();
    r.job_id = q.job_id;
    r.enqueue_order = q.enqueue_order;
    r.not_before = q.not_before;
  }
  WorkerInfo idle;
  idle.worker_id = worker.worker_id;
  idle.idle = true;
  RoundPlan plan = PlanRound(requests, {idle}, {}, SchedulingPolicy{}, now);
  if (plan.placements.empty()) return std::nullopt;
  return plan.placements.front().job_id;
}

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

std::vector<LeaseTable::Lease> LeaseTable::TakeExpired(absl::Time now) {
  std::vector<Lease> out;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.deadline < now) {
      out.push_back(it->second);
      it = leases_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

absl::Duration RetryBackoff(int attempt, absl::Duration base,
                            absl::Duration cap) {
  absl::Duration d = base;
  for (int i = 1; i < attempt && d < cap; ++i) d *= 2;
  return std::min(d, cap);
}

}  // namespace lathe::scheduler
