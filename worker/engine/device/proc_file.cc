#include "worker/engine/device/proc_file.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lathe::engine {

absl::StatusOr<std::string> ReadProcFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  if (!(text << in.rdbuf())) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path));
  }
  return text.str();
}

absl::StatusOr<int64_t> ProcKilobyteField(absl::string_view text,
                                          absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, key) || !absl::ConsumePrefix(&line, ":")) {
      continue;
    }
    line = absl::StripAsciiWhitespace(line);
    int64_t kb = 0;
    if (!absl::ConsumeSuffix(&line, " kB") ||
        !absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kb) || kb < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, ": \"", line, "\" is not a size in kB"));
    }
    return kb * 1024;
  }
  return absl::NotFoundError(absl::StrCat("no ", key, " line"));
}

}  // namespace lathe::engine
