// What an error message says it is about, read the one way the tree writes
// messages: "field: what", "line N: field: what" or "line N: what", with a
// limit named by its flag (max_...). Both transports' error details come
// from here: gRPC's ErrorInfo/BadRequest (common/grpc_status.h) and the
// HTTP gateway's OpenAI error bodies (`param`, `code`). No gRPC.
#ifndef LATHE_COMMON_STATUS_SUBJECT_H_
#define LATHE_COMMON_STATUS_SUBJECT_H_

#include <string>

#include "absl/status/status.h"

namespace lathe {

struct StatusSubject {
  std::string field;        // "lora.alpha", "messages[1].role"; "" if none
  std::string line;         // "2" for "line 2: ..."; "" if none
  std::string limit;        // "max_line_bytes"; "" if none
  std::string description;  // the rest of the message
};

StatusSubject SubjectOf(const std::string& message);

// A stable upper-case code for `code` and what the message is about:
// INVALID_FIELD, INVALID_LINE, INVALID_ARGUMENT, LIMIT_EXCEEDED,
// RESOURCE_EXHAUSTED, WRONG_STATE, else the code's name ("NOT_FOUND").
std::string ErrorReason(absl::StatusCode code, const StatusSubject& subject);

}  // namespace lathe

#endif  // LATHE_COMMON_STATUS_SUBJECT_H_
