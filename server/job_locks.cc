#include "server/job_locks.h"

namespace lathe {

JobLocks::Lock JobLocks::Acquire(const std::string& job_id) {
  Entry* entry;
  {
    absl::MutexLock lock(&mu_);
    std::unique_ptr<Entry>& e = entries_[job_id];
    if (e == nullptr) e = std::make_unique<Entry>();
    ++e->users;
    entry = e.get();
  }
  entry->mu.Lock();
  return Lock(this, job_id, entry);
}

void JobLocks::Release(const std::string& job_id, Entry* entry) {
  entry->mu.Unlock();
  absl::MutexLock lock(&mu_);
  if (--entry->users == 0) entries_.erase(job_id);
}

JobLocks::Lock::~Lock() {
  if (locks_ != nullptr) locks_->Release(job_id_, entry_);
}

int JobLocks::in_use() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(entries_.size());
}

}  // namespace lathe
