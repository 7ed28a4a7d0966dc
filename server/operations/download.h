// What a download sends, for every transport: each file's header and the
// path of its bytes, streamed in chunks.
#ifndef LATHE_SERVER_OPERATIONS_DOWNLOAD_H_
#define LATHE_SERVER_OPERATIONS_DOWNLOAD_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "lathe/v1/fine_tuning.pb.h"

namespace lathe {

struct Download {
  v1::ResultFile file;  // name, size, SHA-256: what the client is told first
  std::string path;     // where its bytes are
};

// Streams the file at `path` through `write(chunk)` in chunks of
// `chunk_bytes`. Errors: NOT_FOUND, INTERNAL, CANCELLED (write refused).
absl::Status StreamFile(const std::string& path, int64_t chunk_bytes,
                        const std::function<bool(absl::string_view)>& write);

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_DOWNLOAD_H_
