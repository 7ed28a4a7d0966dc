#include "common/job_state.h"

#include <utility>

namespace lathe {

using v1::JobStatus;

bool IsAllowedTransition(JobStatus from, JobStatus to) {
  static constexpr std::pair<JobStatus, JobStatus> kAllowed[] = {
      {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_QUEUED},
      {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_FAILED},
      {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_RUNNING},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_FAILED},
      {v1::JOB_STATUS_QUEUED, v1::JOB_STATUS_PAUSED},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_SUCCEEDED},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_FAILED},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_QUEUED},  // attempt lost: retry
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_CANCELLING},
      {v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_PAUSED},
      {v1::JOB_STATUS_PAUSED, v1::JOB_STATUS_QUEUED},
      {v1::JOB_STATUS_PAUSED, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_PAUSED, v1::JOB_STATUS_SUCCEEDED},  // done as it paused
      {v1::JOB_STATUS_CANCELLING, v1::JOB_STATUS_CANCELLED},
      {v1::JOB_STATUS_CANCELLING, v1::JOB_STATUS_SUCCEEDED},
      {v1::JOB_STATUS_CANCELLING, v1::JOB_STATUS_FAILED},
  };
  for (const auto& [f, t] : kAllowed) {
    if (f == from && t == to) return true;
  }
  return false;
}

bool IsTerminal(JobStatus status) {
  return status == v1::JOB_STATUS_SUCCEEDED ||
         status == v1::JOB_STATUS_FAILED || status == v1::JOB_STATUS_CANCELLED;
}

namespace {
constexpr std::pair<JobStatus, absl::string_view> kNames[] = {
    {v1::JOB_STATUS_VALIDATING_FILES, "validating_files"},
    {v1::JOB_STATUS_QUEUED, "queued"},
    {v1::JOB_STATUS_RUNNING, "running"},
    {v1::JOB_STATUS_PAUSED, "paused"},
    {v1::JOB_STATUS_CANCELLING, "cancelling"},
    {v1::JOB_STATUS_SUCCEEDED, "succeeded"},
    {v1::JOB_STATUS_FAILED, "failed"},
    {v1::JOB_STATUS_CANCELLED, "cancelled"},
};
}  // namespace

absl::string_view StatusName(JobStatus status) {
  for (const auto& [s, n] : kNames) {
    if (s == status) return n;
  }
  return "unspecified";
}

JobStatus StatusFromName(absl::string_view name) {
  for (const auto& [s, n] : kNames) {
    if (n == name) return s;
  }
  return v1::JOB_STATUS_UNSPECIFIED;
}

}  // namespace lathe
