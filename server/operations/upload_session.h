// One upload of a training file, fed as it arrives: Begin(header), then
// Add(chunk) for each piece of the body, then Finish() once the client has
// finished sending, or Abort() if it went away. The transport only reads
// its stream and feeds the session; every rule is here:
// - the header comes first and once, and names the size or the SHA-256,
//   so that an interrupted upload is never stored;
// - the body is checked line by line as it streams (JsonlValidator, the
//   formats of common/data_format) and written to a blob, within
//   max_upload_bytes;
// - the file is stored (blob, then record) only by Finish(), when the size
//   and hash match what the header announced;
// - the session holds one of the upload slots (UploadSlots) until it is
//   destroyed, so uploads in flight are capped per key and in all.
// After any error the session is over: every later call returns that error
// and nothing is stored. Destroying it unfinished stores nothing.
//
// Not thread-safe: one caller feeds it. Made by FileOps::StartUpload.
#ifndef LATHE_SERVER_OPERATIONS_UPLOAD_SESSION_H_
#define LATHE_SERVER_OPERATIONS_UPLOAD_SESSION_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lathe/v1/files.pb.h"
#include "server/auth.h"
#include "server/jsonl_validator.h"
#include "server/operations/deps.h"
#include "server/store/blob_store.h"
#include "server/upload_slots.h"

namespace lathe {

class UploadSession {
 public:
  UploadSession(const OperationDeps& deps, Caller caller,
                UploadSlots::Slot slot)
      : deps_(deps), caller_(std::move(caller)), slot_(std::move(slot)) {}

  // Checks the header before any of the body arrives. INVALID_ARGUMENT
  // naming the field (or "header: sent twice"), RESOURCE_EXHAUSTED when it
  // announces more than max_upload_bytes.
  absl::Status Begin(const v1::UploadFileHeader& header);
  // The next bytes of the body. INVALID_ARGUMENT before the header or for a
  // bad line (naming the line and the field), RESOURCE_EXHAUSTED past
  // max_upload_bytes or a line limit.
  absl::Status Add(absl::string_view chunk);
  // The client finished sending: checks the last line and the size, stores
  // the blob and the file's record, and returns the file. INVALID_ARGUMENT
  // (no header, a bad last line, no example), DATA_LOSS (size or SHA-256
  // not as announced).
  absl::StatusOr<v1::File> Finish();
  // The client went away (cancelled, past its deadline): nothing is
  // stored. Returns the CANCELLED status that says so.
  absl::Status Abort();

 private:
  // Ends the session with `error`.
  absl::Status Fail(absl::Status error);

  const OperationDeps deps_;
  const Caller caller_;
  const UploadSlots::Slot slot_;  // freed with the session
  std::optional<v1::UploadFileHeader> header_;
  std::unique_ptr<store::BlobStore::Writer> writer_;
  std::optional<JsonlValidator> validator_;
  absl::Status error_;  // set once the session is over
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_UPLOAD_SESSION_H_
