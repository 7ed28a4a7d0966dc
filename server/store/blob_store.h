// Content-addressed blobs as plain files under <root>/blobs/<aa>/<sha256>.
// A blob is written to <root>/tmp, fsynced, renamed into place and its
// directory fsynced, so a blob that exists under its name is whole.
//
// Thread-safe (no shared mutable state; the filesystem's rename is atomic).
#ifndef LATHE_SERVER_STORE_BLOB_STORE_H_
#define LATHE_SERVER_STORE_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "common/sha256.h"

namespace lathe::store {

class BlobStore {
 public:
  // Creates the folders if needed and removes temporary files left by a
  // crash (they were never referenced).
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& root);

  // Writes one blob. Destroying it without Commit() removes the temporary
  // file. Not thread-safe.
  class Writer {
   public:
    ~Writer();
    absl::Status Append(absl::string_view data);
    int64_t bytes() const { return bytes_; }
    // Syncs and moves the blob into place; returns its SHA-256 (hex). If
    // `expect_sha256` is non-empty and differs, DATA_LOSS and nothing kept.
    absl::StatusOr<std::string> Commit(absl::string_view expect_sha256 = "");

   private:
    friend class BlobStore;
    Writer(const BlobStore& store, std::string tmp_path, int fd)
        : store_(store), tmp_path_(std::move(tmp_path)), fd_(fd) {}
    const BlobStore& store_;
    std::string tmp_path_;
    int fd_;
    int64_t bytes_ = 0;
    Sha256 hash_;
    bool committed_ = false;
  };

  absl::StatusOr<std::unique_ptr<Writer>> NewWriter() const;

  std::string PathFor(absl::string_view sha256) const;
  bool Exists(absl::string_view sha256) const;

 private:
  explicit BlobStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace lathe::store

#endif  // LATHE_SERVER_STORE_BLOB_STORE_H_
