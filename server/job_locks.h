// One mutex per job, made on first use and freed once nobody holds or
// waits for it: what lets the coordinator serialise everything that reads
// a job to decide and then writes it, job by job, without one lock over
// all jobs' SQLite writes.
//
// Thread-safe. A thread holds at most one job's lock at a time (so no two
// threads can wait on each other's).
#ifndef LATHE_SERVER_JOB_LOCKS_H_
#define LATHE_SERVER_JOB_LOCKS_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace lathe {

class JobLocks {
  struct Entry;

 public:
  // A held job lock; released when destroyed. Move-only.
  class Lock {
   public:
    Lock(Lock&& other) noexcept
        : locks_(std::exchange(other.locks_, nullptr)),
          job_id_(std::move(other.job_id_)),
          entry_(other.entry_) {}
    Lock& operator=(Lock&&) = delete;
    ~Lock();

   private:
    friend class JobLocks;
    Lock(JobLocks* locks, std::string job_id, Entry* entry)
        : locks_(locks), job_id_(std::move(job_id)), entry_(entry) {}
    JobLocks* locks_;  // null once moved from
    std::string job_id_;
    Entry* entry_;
  };

  // Blocks until `job_id`'s lock is held.
  // REQUIRES: the caller holds no other job's lock, and the Lock is
  // destroyed before this object.
  Lock Acquire(const std::string& job_id);

  // Jobs whose lock is held or waited for (for tests).
  int in_use() const;

 private:
  struct Entry {
    absl::Mutex mu;
    int users = 0;  // holders and waiters; guarded by JobLocks::mu_
  };
  void Release(const std::string& job_id, Entry* entry);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Entry>> entries_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace lathe

#endif  // LATHE_SERVER_JOB_LOCKS_H_
