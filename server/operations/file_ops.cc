#include "server/operations/file_ops.h"

#include "common/status_macros.h"
#include "server/request_limits.h"
#include "spdlog/spdlog.h"

namespace lathe {

void RemoveBlobIfUnreferenced(const OperationDeps& deps,
                              const std::string& sha256) {
  auto st =
      deps.blobs->RemoveIfUnreferenced(sha256, [&]() -> absl::StatusOr<bool> {
        ASSIGN_OR_RETURN(bool referenced, deps.store->BlobReferenced(sha256));
        return !referenced;
      });
  if (!st.ok()) spdlog::warn("deleting blob {}: {}", sha256, st.ToString());
}

absl::StatusOr<std::unique_ptr<UploadSession>> FileOps::StartUpload(
    const Caller& caller) {
  ASSIGN_OR_RETURN(UploadSlots::Slot slot, uploads_.Acquire(caller.key_id));
  return std::make_unique<UploadSession>(deps_, caller, std::move(slot));
}

absl::StatusOr<v1::File> FileOps::OwnedFile(const Caller& caller,
                                            const std::string& file_id) const {
  RETURN_IF_ERROR(CheckIdField("file_id", file_id));
  auto file = deps_.store->GetFile(file_id);
  if (!file.ok()) return NotFoundAs("file", file_id, file.status());
  RETURN_IF_ERROR(CheckOwner(caller, file->project(), "file", file_id));
  return file;
}

absl::StatusOr<v1::File> FileOps::GetFile(const Caller& caller,
                                          const v1::GetFileRequest& r) const {
  return OwnedFile(caller, r.file_id());
}

absl::StatusOr<v1::ListFilesResponse> FileOps::ListFiles(
    const Caller& caller, const v1::ListFilesRequest& r) const {
  if (r.limit() < 0 || r.limit() > 100) {
    return absl::InvalidArgumentError("limit: must be 1..100");
  }
  RETURN_IF_ERROR(CheckIdField("after", r.after(), /*required=*/false));
  RETURN_IF_ERROR(CheckIdField("purpose", r.purpose(), /*required=*/false));
  ASSIGN_OR_RETURN(auto page, deps_.store->ListFiles(caller.project, r.limit(),
                                                     r.after(), r.purpose()));
  v1::ListFilesResponse out;
  for (auto& f : page.data) *out.add_data() = std::move(f);
  out.set_has_more(page.has_more);
  return out;
}

absl::StatusOr<v1::DeleteFileResponse> FileOps::DeleteFile(
    const Caller& caller, const v1::DeleteFileRequest& r) const {
  ASSIGN_OR_RETURN(v1::File file, OwnedFile(caller, r.file_id()));
  ASSIGN_OR_RETURN(bool unreferenced, deps_.store->DeleteFile(r.file_id()));
  if (unreferenced) {
    // The record is gone first: a crash here leaves an orphan blob (removed
    // at the next start), never a record without its blob. Asked again
    // once no commit is in flight: an upload of the same bytes may have
    // just committed them for a record of its own.
    RemoveBlobIfUnreferenced(deps_, file.sha256());
  }
  v1::DeleteFileResponse out;
  out.set_id(r.file_id());
  out.set_deleted(true);
  return out;
}

absl::StatusOr<std::string> FileOps::DownloadFile(
    const Caller& caller, const v1::DownloadFileRequest& r) const {
  ASSIGN_OR_RETURN(v1::File file, OwnedFile(caller, r.file_id()));
  return deps_.blobs->PathFor(file.sha256());
}

}  // namespace lathe
