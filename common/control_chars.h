// Control characters in names a user chose (file names), found to refuse
// them and escaped to print them: a name must not move the cursor, clear a
// terminal or print as another name.
//
// Controls are C0 (U+0000-U+001F), DEL (U+007F), C1 (U+0080-U+009F) and
// the bidirectional marks, embeddings, overrides and isolates (U+061C,
// U+200E, U+200F, U+202A-U+202E, U+2066-U+2069). Strings are read as
// UTF-8; a byte that is not part of valid UTF-8 is not a control.
#ifndef LATHE_COMMON_CONTROL_CHARS_H_
#define LATHE_COMMON_CONTROL_CHARS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace lathe {

struct ControlChar {
  uint32_t code_point = 0;
  size_t offset = 0;  // byte offset of its first byte
};

// The first control character of `s`, if any.
std::optional<ControlChar> FindControlChar(absl::string_view s);

// `s` with each control character written as \uXXXX and each byte that is
// not valid UTF-8 as \xNN (and '\' as \\), so that it prints as itself.
std::string EscapeControlChars(absl::string_view s);

}  // namespace lathe

#endif  // LATHE_COMMON_CONTROL_CHARS_H_
