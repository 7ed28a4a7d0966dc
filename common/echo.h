// Client input quoted back in an error message, made safe to print and
// bounded: a 100 KB id must not become a 100 KB error (gRPC carries the
// message in a trailer whose size is limited), and control characters must
// not reach a terminal.
#ifndef LATHE_COMMON_ECHO_H_
#define LATHE_COMMON_ECHO_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace lathe {

// At most `max_bytes` bytes of `input`: printable ASCII as is, every other
// byte (controls, DEL, non-ASCII, and the backslash) as \xNN; input beyond
// `max_bytes` is replaced by "...(N bytes)", N being the input's size.
std::string Echo(absl::string_view input, size_t max_bytes = 64);

}  // namespace lathe

#endif  // LATHE_COMMON_ECHO_H_
