#include "server/operations/download.h"

#include <fstream>

#include "absl/strings/str_cat.h"

namespace lathe {

absl::Status StreamFile(const std::string& path, int64_t chunk_bytes,
                        const std::function<bool(absl::string_view)>& write) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("blob missing: ", path));
  std::string buf(static_cast<size_t>(chunk_bytes), '\0');
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    std::streamsize n = in.gcount();
    if (n > 0 &&
        !write(absl::string_view(buf.data(), static_cast<size_t>(n)))) {
      return absl::CancelledError("the client went away");
    }
  }
  if (in.bad()) return absl::InternalError(absl::StrCat("read error: ", path));
  return absl::OkStatus();
}

}  // namespace lathe
