// One result file a worker uploads (a checkpoint's file or the adapter's),
// fed as it arrives: Begin(header), Add(chunk) for each piece, Finish()
// once the worker has finished sending. The header must name the job's
// current attempt and a file that attempt may send; the file is recorded
// only if its size and SHA-256 are as announced and the attempt is still
// current when it is (Coordinator::RecordResultFile). After any error the
// upload is over and every later call returns that error; destroying it
// unfinished stores nothing.
//
// Not thread-safe: one caller feeds it. Made by WorkerOps::StartResultUpload.
#ifndef LATHE_SERVER_OPERATIONS_RESULT_UPLOAD_H_
#define LATHE_SERVER_OPERATIONS_RESULT_UPLOAD_H_

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lathe/v1/worker.pb.h"
#include "server/operations/deps.h"
#include "server/store/blob_store.h"

namespace lathe {

class ResultUpload {
 public:
  explicit ResultUpload(const OperationDeps& deps) : deps_(deps) {}

  // INVALID_ARGUMENT (a field; "header: sent twice"), FAILED_PRECONDITION
  // (the attempt is not current).
  absl::Status Begin(const v1::UploadResultHeader& header);
  // INVALID_ARGUMENT before the header.
  absl::Status Add(absl::string_view chunk);
  // Stores the blob and records the file. DATA_LOSS (size or SHA-256 not
  // as announced), FAILED_PRECONDITION (the attempt lost its lease
  // meanwhile, or the checkpoint is already recorded).
  absl::StatusOr<v1::ResultFile> Finish();

 private:
  absl::Status Fail(absl::Status error);

  const OperationDeps deps_;
  std::optional<v1::UploadResultHeader> header_;
  std::unique_ptr<store::BlobStore::Writer> writer_;
  absl::Status error_;  // set once the upload is over
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_RESULT_UPLOAD_H_
