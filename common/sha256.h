// Streaming SHA-256 (OpenSSL underneath), hex digests.
#ifndef LATHE_COMMON_SHA256_H_
#define LATHE_COMMON_SHA256_H_

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace lathe {

// Incremental hasher. Not thread-safe; one per stream.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view data);
  // Lower-case hex of the digest. REQUIRES: called once, last.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string Sha256Hex(absl::string_view data);
// Hashes a whole file. Errors: NOT_FOUND, INTERNAL (read error).
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace lathe

#endif  // LATHE_COMMON_SHA256_H_
