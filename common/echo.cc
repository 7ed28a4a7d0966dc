#include "common/echo.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lathe {

std::string Echo(absl::string_view input, size_t max_bytes) {
  std::string out;
  absl::string_view head = input.substr(0, max_bytes);
  for (char c : head) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\') {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    }
  }
  if (input.size() > max_bytes)
    absl::StrAppend(&out, "...(", input.size(), " bytes)");
  return out;
}

}  // namespace lathe
