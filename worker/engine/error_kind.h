// What an engine error is about, carried on the status itself (a payload),
// so the worker maps failures to job errors by what went wrong, never by a
// status code that several causes share:
//   kUserData     a line of a data file (field: "training_file" or
//                 "validation_file")
//   kUserOptions  a setting of the run (field: its API name, e.g.
//                 "method.supervised.hyperparameters.batch_size")
//   kModel        the base model's files (config, weights, tokenizer)
//   kPlatform     everything else: I/O, LibTorch, checkpoints (the default
//                 for an error that carries no kind)
#ifndef LATHE_WORKER_ENGINE_ERROR_KIND_H_
#define LATHE_WORKER_ENGINE_ERROR_KIND_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lathe::engine {

enum class ErrorKind { kPlatform, kUserData, kUserOptions, kModel };

// `status` (not OK) marked as `kind`, about `field` ("" for none).
absl::Status WithErrorKind(absl::Status status, ErrorKind kind, absl::string_view field = "");

// `result`, its error marked as `kind` about `field`.
template <typename T>
absl::StatusOr<T> WithErrorKind(absl::StatusOr<T> result, ErrorKind kind,
                                absl::string_view field = "") {
  if (result.ok()) return result;
  return WithErrorKind(result.status(), kind, field);
}

// The kind `status` was marked with; kPlatform when none.
ErrorKind ErrorKindOf(const absl::Status& status);

// The field it was marked with; "" when none.
std::string ErrorFieldOf(const absl::Status& status);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ERROR_KIND_H_
