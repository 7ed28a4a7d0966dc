// The Files operations: uploads (an UploadSession per upload), reading,
// listing, deleting and downloading a project's files. A file of another
// project is NOT_FOUND, worded as for a missing one.
//
// Thread-safe.
#ifndef LATHE_SERVER_OPERATIONS_FILE_OPS_H_
#define LATHE_SERVER_OPERATIONS_FILE_OPS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lathe/v1/files.pb.h"
#include "server/auth.h"
#include "server/operations/deps.h"
#include "server/operations/upload_session.h"
#include "server/upload_slots.h"

namespace lathe {

class FileOps {
 public:
  // What `deps` points to must outlive this.
  explicit FileOps(const OperationDeps& deps)
      : deps_(deps),
        uploads_({.per_key = deps.options.max_uploads_in_flight_per_key,
                  .per_server = deps.options.max_uploads_in_flight}) {}

  // A new upload by `caller`, holding one upload slot until it is
  // destroyed. RESOURCE_EXHAUSTED (max_uploads_in_flight_per_key,
  // max_uploads_in_flight) when the key or the server has its limit open.
  // REQUIRES: the session is destroyed before this object.
  absl::StatusOr<std::unique_ptr<UploadSession>> StartUpload(
      const Caller& caller);
  absl::StatusOr<v1::File> GetFile(const Caller& caller,
                                   const v1::GetFileRequest& request) const;
  // INVALID_ARGUMENT for a bad limit, cursor or purpose.
  absl::StatusOr<v1::ListFilesResponse> ListFiles(
      const Caller& caller, const v1::ListFilesRequest& request) const;
  // FAILED_PRECONDITION while an unfinished job uses the file.
  absl::StatusOr<v1::DeleteFileResponse> DeleteFile(
      const Caller& caller, const v1::DeleteFileRequest& request) const;
  // The path of the file's bytes.
  absl::StatusOr<std::string> DownloadFile(
      const Caller& caller, const v1::DownloadFileRequest& request) const;

  // Uploads open now, in all and of `key_id` (for tests).
  int uploads_in_flight() const { return uploads_.in_flight(); }
  int uploads_in_flight(const std::string& key_id) const {
    return uploads_.in_flight(key_id);
  }

 private:
  absl::StatusOr<v1::File> OwnedFile(const Caller& caller,
                                     const std::string& file_id) const;

  const OperationDeps deps_;
  UploadSlots uploads_;
};

// Deletes blob `sha256` unless a record names it (asked once no blob
// commit is in flight); for a blob whose record was refused or deleted.
// Logs a failure: a blob left behind goes at the next start.
// REQUIRES: the caller holds no committed BlobStore::Writer.
void RemoveBlobIfUnreferenced(const OperationDeps& deps,
                              const std::string& sha256);

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_FILE_OPS_H_
