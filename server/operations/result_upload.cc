#include "server/operations/result_upload.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/status_macros.h"
#include "server/operations/file_ops.h"
#include "server/request_limits.h"

namespace lathe {
namespace {

// Which files an attempt may send: a checkpoint holds any plain file names;
// a LoRA job's result is the PEFT adapter's two files, a full fine-tuning
// job's a model folder.
absl::Status CheckResultHeader(const OperationDeps& deps,
                               const v1::UploadResultHeader& h) {
  bool plain_name =
      !h.name().empty() && h.name().size() <= 128 &&
      h.name().find_first_of(std::string("/\\\0", 3)) == std::string::npos &&
      h.name() != "." && h.name() != "..";
  if (h.sha256().size() != 64) {
    return absl::InvalidArgumentError("sha256: required (64 hex digits)");
  }
  RETURN_IF_ERROR(CheckIdField("job_id", h.job_id()));
  RETURN_IF_ERROR(
      deps.coordinator->CheckCurrentAttempt(h.job_id(), h.attempt()));
  ASSIGN_OR_RETURN(v1::Job job, deps.store->GetJob(h.job_id()));
  bool allowed =
      h.checkpoint_step() > 0 || job.adapter() == v1::ADAPTER_TYPE_FULL ||
              job.adapter() == v1::ADAPTER_TYPE_S2FT  // the merged folder + diff
          ? plain_name
          : h.name() == "adapter_config.json" ||
                h.name() == "adapter_model.safetensors";
  if (!allowed || h.checkpoint_step() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: \"", Echo(h.name()), "\" is not a result file"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ResultUpload::Fail(absl::Status error) {
  error_ = error;
  writer_.reset();  // the partial blob goes
  return error;
}

absl::Status ResultUpload::Begin(const v1::UploadResultHeader& header) {
  RETURN_IF_ERROR(error_);
  if (header_) return Fail(absl::InvalidArgumentError("header: sent twice"));
  if (absl::Status st = CheckResultHeader(deps_, header); !st.ok()) {
    return Fail(st);
  }
  auto writer = deps_.blobs->NewWriter();
  if (!writer.ok()) return Fail(writer.status());
  header_ = header;
  writer_ = *std::move(writer);
  return absl::OkStatus();
}

absl::Status ResultUpload::Add(absl::string_view chunk) {
  RETURN_IF_ERROR(error_);
  if (!header_)
    return Fail(absl::InvalidArgumentError("header: must come first"));
  if (absl::Status st = writer_->Append(chunk); !st.ok()) return Fail(st);
  return absl::OkStatus();
}

absl::StatusOr<v1::ResultFile> ResultUpload::Finish() {
  RETURN_IF_ERROR(error_);
  if (!header_)
    return Fail(absl::InvalidArgumentError("header: must come first"));
  const v1::UploadResultHeader& h = *header_;
  if (writer_->bytes() != h.bytes()) {
    return Fail(absl::DataLossError(absl::StrCat(
        "bytes: announced ", h.bytes(), ", received ", writer_->bytes())));
  }
  // A failed write or fsync is an error here, never a stored file: the
  // worker keeps its previous checkpoint and tries again later.
  auto sha = writer_->Commit(h.sha256());
  if (!sha.ok()) return Fail(sha.status());
  v1::ResultFile f;
  f.set_name(h.name());
  f.set_bytes(h.bytes());
  f.set_sha256(*sha);
  // The attempt may have been superseded while the bytes arrived: checked
  // again together with the write.
  absl::Status recorded = deps_.coordinator->RecordResultFile(
      h.job_id(), h.attempt(), h.checkpoint_step(), f);
  // Unpinned before a delete waits for pins, and within this call: a
  // committed Writer pins its blob on the thread that committed it.
  writer_.reset();
  if (!recorded.ok()) {
    RemoveBlobIfUnreferenced(deps_, *sha);
    return Fail(recorded);
  }
  error_ = absl::FailedPreconditionError("upload: already finished");
  return f;
}

}  // namespace lathe
