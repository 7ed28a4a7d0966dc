// Reading a job back in process tests: the demo job, every event of a job,
// waiting for a state, and the attempts its events tell of.
#ifndef LATHE_TESTS_JOB_HISTORY_H_
#define LATHE_TESTS_JOB_HISTORY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace lathe::testing {

// A demo job: `epochs` passes over the demo's 80 examples, 4 per step.
v1::CreateJobRequest DemoJob(const std::string& file_id, int epochs);

// Every event of a job, oldest first (as far as the server answers).
std::vector<v1::JobEvent> AllEvents(Client& c, const std::string& job_id);

// Polls the job until `done` holds or `timeout` passes (DEADLINE_EXCEEDED).
absl::StatusOr<v1::Job> WaitForJob(Client& c, const std::string& job_id,
                                   const std::function<bool(const v1::Job&)>& done,
                                   absl::Duration timeout = absl::Minutes(2));

// The number right after the first `prefix` in `text` (0 if absent).
int64_t NumberAfter(const std::string& text, const std::string& prefix);

// One attempt of a job as its events tell it.
struct AttemptHistory {
  int32_t attempt = 0;
  std::string worker_id;            // "worker-1"
  int64_t resumed_from = 0;         // checkpoint step it started from; 0: fresh
  std::vector<int64_t> steps;       // metrics steps recorded, in order
  // The newest checkpoint recorded by the time the attempt ended.
  int64_t latest_checkpoint = 0;
  bool lease_expired = false;       // lathed gave up on it
  int64_t last_step() const { return steps.empty() ? 0 : steps.back(); }
};
// Splits a job's events at each "Job started on worker W (attempt N)".
std::vector<AttemptHistory> Attempts(const std::vector<v1::JobEvent>& events);

}  // namespace lathe::testing

#endif  // LATHE_TESTS_JOB_HISTORY_H_
