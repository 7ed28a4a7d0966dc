// Return-if-error and assign-or-return for absl::Status / absl::StatusOr.
#ifndef LATHE_COMMON_STATUS_MACROS_H_
#define LATHE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LATHE_CONCAT_INNER_(a, b) a##b
#define LATHE_CONCAT_(a, b) LATHE_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the caller if not ok.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status lathe_status_ = (expr);           \
    if (!lathe_status_.ok()) return lathe_status_;   \
  } while (0)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its status.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(LATHE_CONCAT_(lathe_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                           \
  if (!tmp.ok()) return tmp.status();           \
  lhs = std::move(tmp).value()

#endif  // LATHE_COMMON_STATUS_MACROS_H_
