#include "common/control_chars.h"

#include "absl/strings/str_format.h"

namespace lathe {
namespace {

bool IsControl(uint32_t cp) {
  return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x061C ||
         cp == 0x200E || cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

// Decodes the UTF-8 sequence at s[i]: its code point and length, or length
// 0 if the bytes there are not valid UTF-8 (overlong, surrogate, cut).
std::pair<uint32_t, size_t> Decode(absl::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) return {b, 1};
  size_t n = 0;
  uint32_t cp = 0;
  uint32_t min = 0;
  if ((b & 0xE0) == 0xC0) {
    n = 2, cp = b & 0x1F, min = 0x80;
  } else if ((b & 0xF0) == 0xE0) {
    n = 3, cp = b & 0x0F, min = 0x800;
  } else if ((b & 0xF8) == 0xF0) {
    n = 4, cp = b & 0x07, min = 0x10000;
  } else {
    return {0, 0};
  }
  if (i + n > s.size()) return {0, 0};
  for (size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xC0) != 0x80) return {0, 0};
    cp = (cp << 6) | (c & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return {0, 0};
  }
  return {cp, n};
}

}  // namespace

std::optional<ControlChar> FindControlChar(absl::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto [cp, n] = Decode(s, i);
    if (n > 0 && IsControl(cp)) return ControlChar{cp, i};
    i += n > 0 ? n : 1;
  }
  return std::nullopt;
}

std::string EscapeControlChars(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const auto [cp, n] = Decode(s, i);
    if (n == 0) {
      absl::StrAppendFormat(&out, "\\x%02x", static_cast<unsigned char>(s[i]));
      ++i;
      continue;
    }
    if (IsControl(cp)) {
      absl::StrAppendFormat(&out, "\\u%04X", cp);
    } else if (cp == '\\') {
      out += "\\\\";
    } else {
      out.append(s.data() + i, n);
    }
    i += n;
  }
  return out;
}

}  // namespace lathe
