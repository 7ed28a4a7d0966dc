// The job state machine: which transitions exist. Every transition is applied
// as a compare-and-set in the store (UPDATE … WHERE status = from).
#ifndef LATHE_COMMON_JOB_STATE_H_
#define LATHE_COMMON_JOB_STATE_H_

#include "absl/strings/string_view.h"

#include "lathe/v1/fine_tuning.pb.h"

namespace lathe {

// True if a job may move from `from` to `to`.
bool IsAllowedTransition(v1::JobStatus from, v1::JobStatus to);
// succeeded, failed, cancelled.
bool IsTerminal(v1::JobStatus status);
// The API's lower-case name: "queued", "running", …
absl::string_view StatusName(v1::JobStatus status);
// Inverse of StatusName; JOB_STATUS_UNSPECIFIED if unknown.
v1::JobStatus StatusFromName(absl::string_view name);

}  // namespace lathe

#endif  // LATHE_COMMON_JOB_STATE_H_
