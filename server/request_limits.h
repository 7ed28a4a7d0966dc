// Bounds on what a request may carry, checked at the door of every RPC so
// that no unbounded input reaches the store, a log line or an error
// message (an error quotes input through Echo, never whole).
#ifndef LATHE_SERVER_REQUEST_LIMITS_H_
#define LATHE_SERVER_REQUEST_LIMITS_H_

#include <cstddef>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lathe {

constexpr size_t kMaxIdBytes = 128;  // ids, names, cursors
constexpr int kMaxMetadataPairs = 16;
constexpr size_t kMaxMetadataKeyBytes = 64;
constexpr size_t kMaxMetadataValueBytes = 512;

// An id-like field: at most kMaxIdBytes of printable ASCII; empty is
// "required" unless `required` is false. INVALID_ARGUMENT naming `field`.
absl::Status CheckIdField(absl::string_view field, absl::string_view value,
                          bool required = true);

// Metadata pairs (a job's, or a list filter): at most kMaxMetadataPairs,
// keys 1..64 bytes, values at most 512. INVALID_ARGUMENT naming the field.
absl::Status CheckMetadata(const std::map<std::string, std::string>& metadata);

// NOT_FOUND worded the one way ("no such job: <id>") whatever said it, so
// that a missing id and another project's read the same; other statuses
// pass through.
absl::Status NotFoundAs(absl::string_view what, absl::string_view id,
                        const absl::Status& status);

}  // namespace lathe

#endif  // LATHE_SERVER_REQUEST_LIMITS_H_
