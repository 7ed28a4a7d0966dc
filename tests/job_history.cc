#include "tests/job_history.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace lathe::testing {

v1::CreateJobRequest DemoJob(const std::string& file_id, int epochs) {
  v1::CreateJobRequest r;
  r.set_model("lathe-demo");
  r.set_training_file(file_id);
  r.set_seed(1);
  auto* hp = r.mutable_method()->mutable_supervised()->mutable_hyperparameters();
  hp->set_n_epochs(epochs);
  hp->set_batch_size(4);
  return r;
}

std::vector<v1::JobEvent> AllEvents(Client& c, const std::string& job_id) {
  std::vector<v1::JobEvent> out;
  v1::ListJobEventsRequest r;
  r.set_job_id(job_id);
  r.set_limit(1000);
  while (true) {
    auto page = c.ListJobEvents(r);
    if (!page.ok()) return out;
    out.insert(out.end(), page->data().begin(), page->data().end());
    if (!page->has_more() || out.empty()) return out;
    r.set_after(out.back().id());
  }
}

absl::StatusOr<v1::Job> WaitForJob(Client& c, const std::string& job_id,
                                   const std::function<bool(const v1::Job&)>& done,
                                   absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<v1::Job> job;
  while (absl::Now() < deadline) {
    job = c.GetJob(job_id);
    if (job.ok() && done(*job)) return job;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "waiting for ", job_id, ": last seen ",
      job.ok() ? job->ShortDebugString() : job.status().ToString()));
}

int64_t NumberAfter(const std::string& text, const std::string& prefix) {
  size_t at = text.find(prefix);
  if (at == std::string::npos) return 0;
  size_t begin = at + prefix.size();
  size_t end = begin;
  while (end < text.size() && absl::ascii_isdigit(text[end])) ++end;
  int64_t n = 0;
  return absl::SimpleAtoi(text.substr(begin, end - begin), &n) ? n : 0;
}

std::vector<AttemptHistory> Attempts(const std::vector<v1::JobEvent>& events) {
  const std::string kStarted = "Job started on worker ";
  std::vector<AttemptHistory> out;
  int64_t latest_checkpoint = 0;
  for (const v1::JobEvent& e : events) {
    const std::string& m = e.message();
    if (absl::StartsWith(m, kStarted)) {
      AttemptHistory a;
      a.worker_id = m.substr(kStarted.size(), m.find(' ', kStarted.size()) - kStarted.size());
      a.attempt = static_cast<int32_t>(NumberAfter(m, "(attempt "));
      a.latest_checkpoint = latest_checkpoint;
      out.push_back(std::move(a));
      continue;
    }
    if (absl::StartsWith(m, "Checkpoint saved at step ")) {
      latest_checkpoint = std::max(latest_checkpoint, NumberAfter(m, "at step "));
    }
    if (out.empty()) continue;
    AttemptHistory& a = out.back();
    a.latest_checkpoint = latest_checkpoint;
    if (e.type() == "metrics") {
      a.steps.push_back(e.metrics().step());
    } else if (absl::StartsWith(m, "Resuming from the checkpoint at step ")) {
      a.resumed_from = NumberAfter(m, "at step ");
    } else if (absl::StrContains(m, "stopped reporting (lease expired)")) {
      a.lease_expired = true;
    }
  }
  return out;
}

}  // namespace lathe::testing
