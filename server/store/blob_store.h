// Content-addressed blobs as plain files under <root>/blobs/<aa>/<sha256>.
// A blob is written to <root>/tmp, fsynced, renamed into place and its
// directory fsynced, so a blob that exists under its name is whole.
//
// Thread-safe: the filesystem's rename is atomic, and deleting a blob waits
// for the commits in flight (see RemoveIfUnreferenced).
#ifndef LATHE_SERVER_STORE_BLOB_STORE_H_
#define LATHE_SERVER_STORE_BLOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/sha256.h"

namespace lathe::store {

class BlobStore {
 public:
  // Creates the folders if needed and removes temporary files left by a
  // crash (they were never referenced). lathed then removes the blobs no
  // record names (RemoveUnreferenced with Store::ReferencedBlobs()).
  // REQUIRES: nothing else uses `root` yet (start-up).
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& root);

  // Writes one blob. Destroying it without Commit() removes the temporary
  // file. From Commit() until it is destroyed it pins the blob against
  // RemoveIfUnreferenced: keep it until the blob's record is written, and
  // hold one committed Writer per thread at a time. Not thread-safe.
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
    bool pinned_ = false;  // holds store_.remove_mu_ shared
  };

  absl::StatusOr<std::unique_ptr<Writer>> NewWriter() const;

  std::string PathFor(absl::string_view sha256) const;
  bool Exists(absl::string_view sha256) const;

  // Deletes every blob whose SHA-256 is not in `keep`; returns how many. A
  // blob is renamed into place before its record commits and a record is
  // deleted before its blob, so a crash in between leaves a blob that no
  // record names. Only names of the store's own layout are touched. An
  // empty `keep` deletes nothing: a missing or wrong database must not
  // empty the store.
  // REQUIRES: no blob is being written (a blob committed but not yet
  // recorded would be deleted).
  absl::StatusOr<int> RemoveUnreferenced(
      const absl::flat_hash_set<std::string>& keep) const;

  // Deletes blob `sha256` if `unreferenced()`, asked once no Writer pins a
  // commit (e.g. of the database), says that no record names it. A blob
  // committed again for a new record that is not written yet is kept.
  absl::Status RemoveIfUnreferenced(
      absl::string_view sha256,
      const std::function<absl::StatusOr<bool>()>& unreferenced) const;

 private:
  explicit BlobStore(std::string root) : root_(std::move(root)) {}
  const std::string root_;
  // Shared by each Writer from Commit() until destroyed; exclusive while a
  // blob is deleted.
  mutable absl::Mutex remove_mu_;
};

}  // namespace lathe::store

#endif  // LATHE_SERVER_STORE_BLOB_STORE_H_
