#include <algorithm>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/control_chars.h"
#include "common/grpc_status.h"
#include "common/ids.h"
#include "common/status_macros.h"
#include "server/jsonl_validator.h"
#include "server/request_limits.h"
#include "server/services.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

bool IsHex(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return absl::ascii_isxdigit(c); });
}

// Checks the header before any of the body is read.
absl::Status CheckHeader(const v1::UploadFileHeader& h) {
  const std::string& name = h.filename();
  if (name.empty()) return absl::InvalidArgumentError("filename: required");
  if (name.size() > 255) {
    return absl::InvalidArgumentError("filename: longer than 255 bytes");
  }
  if (name.find_first_of(std::string("/\\\0", 3)) != std::string::npos ||
      name == "." || name == "..") {
    return absl::InvalidArgumentError(
        "filename: must be a plain name (no '/', '\\', NUL, '.' or '..')");
  }
  if (auto control = FindControlChar(name)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "filename: control character U+%04X at byte %d (not allowed in a name)",
        control->code_point, control->offset));
  }
  if (absl::StripAsciiWhitespace(name).empty()) {
    return absl::InvalidArgumentError("filename: blank (only whitespace)");
  }
  if (h.purpose() != "fine-tune") {
    return absl::InvalidArgumentError(absl::StrCat(
        "purpose: \"", h.purpose(), "\" is not supported (use \"fine-tune\")"));
  }
  if (h.bytes() < 0) return absl::InvalidArgumentError("bytes: negative");
  if (!h.sha256().empty() && (h.sha256().size() != 64 || !IsHex(h.sha256()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sha256: expected 64 hex digits (the SHA-256 of the file), got ",
        h.sha256().size(), " characters"));
  }
  // Without either, a stream cut short at a line end looks like a whole
  // file: the size or the hash is what tells them apart.
  if (h.bytes() == 0 && h.sha256().empty()) {
    return absl::InvalidArgumentError(
        "bytes: required (the file's size; or give sha256), so that an "
        "interrupted upload is never stored");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::File> ReceiveUpload(
    const ServerContext& ctx, const Caller& caller,
    grpc::ServerContext* context,
    grpc::ServerReader<v1::UploadFileRequest>* reader) {
  v1::UploadFileRequest msg;
  if (!reader->Read(&msg) || !msg.has_header()) {
    return absl::InvalidArgumentError(
        "header: the first message of an upload must be its header");
  }
  const v1::UploadFileHeader header = msg.header();
  RETURN_IF_ERROR(CheckHeader(header));
  if (header.bytes() > ctx.options.max_upload_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("bytes: ", header.bytes(), " exceeds max_upload_bytes (",
                     ctx.options.max_upload_bytes, ")"));
  }
  ASSIGN_OR_RETURN(auto writer, ctx.blobs->NewWriter());
  JsonlValidator validator(JsonlValidator::Limits{
      .max_line_bytes = ctx.options.max_line_bytes,
      .max_examples = ctx.options.max_examples_per_file});
  while (reader->Read(&msg)) {
    if (!msg.has_chunk()) {
      return absl::InvalidArgumentError("header: sent twice");
    }
    const std::string& chunk = msg.chunk();
    if (writer->bytes() + static_cast<int64_t>(chunk.size()) >
        ctx.options.max_upload_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("file exceeds max_upload_bytes (",
                       ctx.options.max_upload_bytes, " bytes)"));
    }
    RETURN_IF_ERROR(validator.Feed(chunk));
    RETURN_IF_ERROR(writer->Append(chunk));
  }
  // Read() also ends when the call is cancelled or past its deadline: only
  // a stream the client half-closed is a whole file.
  if (context->IsCancelled()) {
    return absl::CancelledError(
        "the upload was cancelled or ran past its deadline before the client "
        "finished it; nothing stored");
  }
  RETURN_IF_ERROR(validator.Finish());
  if (header.bytes() > 0 && header.bytes() != writer->bytes()) {
    return absl::DataLossError(absl::StrCat(
        "bytes: the header announced ", header.bytes(), " bytes but ",
        writer->bytes(), " arrived (interrupted upload?)"));
  }
  v1::File file;
  file.set_bytes(writer->bytes());
  ASSIGN_OR_RETURN(std::string sha,
                   writer->Commit(absl::AsciiStrToLower(header.sha256())));
  file.set_id(NewId("file"));
  file.set_created_at(NowUnixSeconds());
  file.set_filename(header.filename());
  file.set_purpose(header.purpose());
  file.set_sha256(sha);
  file.set_line_count(validator.examples());
  file.set_format(validator.format());
  file.set_project(caller.project);
  if (absl::Status st = ctx.store->InsertFile(file); !st.ok()) {
    writer.reset();  // unpinned before the delete waits for pins
    RemoveBlobIfUnreferenced(ctx, sha);
    return st;
  }
  spdlog::info("stored {} ({}, {} bytes, {} examples)", file.id(),
               file.filename(), file.bytes(), file.line_count());
  return file;
}

}  // namespace

void RemoveBlobIfUnreferenced(const ServerContext& ctx,
                              const std::string& sha256) {
  auto st =
      ctx.blobs->RemoveIfUnreferenced(sha256, [&]() -> absl::StatusOr<bool> {
        ASSIGN_OR_RETURN(bool referenced, ctx.store->BlobReferenced(sha256));
        return !referenced;
      });
  if (!st.ok()) spdlog::warn("deleting blob {}: {}", sha256, st.ToString());
}

absl::StatusOr<v1::File> FilesService::OwnedFile(
    const grpc::ServerContext* context, const std::string& file_id) const {
  ASSIGN_OR_RETURN(Caller caller, ctx_.auth->User(context));
  RETURN_IF_ERROR(CheckIdField("file_id", file_id));
  auto file = ctx_.store->GetFile(file_id);
  if (!file.ok()) return NotFoundAs("file", file_id, file.status());
  RETURN_IF_ERROR(CheckOwner(caller, file->project(), "file", file_id));
  return file;
}

grpc::Status FilesService::Upload(
    grpc::ServerContext* context,
    grpc::ServerReader<v1::UploadFileRequest>* reader, v1::File* response) {
  auto caller = ctx_.auth->User(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto slot = uploads_.Acquire(caller->key_id);
  if (!slot.ok()) return ToGrpcStatus(slot.status());
  auto file = ReceiveUpload(ctx_, *caller, context, reader);
  if (!file.ok()) return ToGrpcStatus(file.status());
  *response = *std::move(file);
  return grpc::Status::OK;
}

grpc::Status FilesService::GetFile(grpc::ServerContext* context,
                                   const v1::GetFileRequest* request,
                                   v1::File* response) {
  auto file = OwnedFile(context, request->file_id());
  if (!file.ok()) return ToGrpcStatus(file.status());
  *response = *std::move(file);
  return grpc::Status::OK;
}

grpc::Status FilesService::ListFiles(grpc::ServerContext* context,
                                     const v1::ListFilesRequest* request,
                                     v1::ListFilesResponse* response) {
  auto caller = ctx_.auth->User(context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (request->limit() < 0 || request->limit() > 100) {
    return ToGrpcStatus(absl::InvalidArgumentError("limit: must be 1..100"));
  }
  for (const auto& [field, value] :
       {std::pair<const char*, const std::string&>{"after", request->after()},
        {"purpose", request->purpose()}}) {
    if (auto st = CheckIdField(field, value, /*required=*/false); !st.ok()) {
      return ToGrpcStatus(st);
    }
  }
  auto page = ctx_.store->ListFiles(caller->project, request->limit(),
                                    request->after(), request->purpose());
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (auto& f : page->data) *response->add_data() = std::move(f);
  response->set_has_more(page->has_more);
  return grpc::Status::OK;
}

grpc::Status FilesService::DeleteFile(grpc::ServerContext* context,
                                      const v1::DeleteFileRequest* request,
                                      v1::DeleteFileResponse* response) {
  auto file = OwnedFile(context, request->file_id());
  if (!file.ok()) return ToGrpcStatus(file.status());
  auto unreferenced = ctx_.store->DeleteFile(request->file_id());
  if (!unreferenced.ok()) return ToGrpcStatus(unreferenced.status());
  if (*unreferenced) {
    // The record is gone first: a crash here leaves an orphan blob (removed
    // at the next start), never a record without its blob. Asked again
    // once no commit is in flight: an upload of the same bytes may have
    // just committed them for a record of its own.
    RemoveBlobIfUnreferenced(ctx_, file->sha256());
  }
  response->set_id(request->file_id());
  response->set_deleted(true);
  return grpc::Status::OK;
}

grpc::Status FilesService::DownloadFile(
    grpc::ServerContext* context, const v1::DownloadFileRequest* request,
    grpc::ServerWriter<v1::FileContent>* writer) {
  auto file = OwnedFile(context, request->file_id());
  if (!file.ok()) return ToGrpcStatus(file.status());
  return ToGrpcStatus(
      StreamFileTo(ctx_, ctx_.blobs->PathFor(file->sha256()), writer));
}

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
