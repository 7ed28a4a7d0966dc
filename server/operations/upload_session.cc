#include "server/operations/upload_session.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/control_chars.h"
#include "common/ids.h"
#include "common/status_macros.h"
#include "server/operations/file_ops.h"
#include "spdlog/spdlog.h"

namespace lathe {
namespace {

bool IsHex(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return absl::ascii_isxdigit(c); });
}

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

absl::Status MissingHeader() {
  return absl::InvalidArgumentError(
      "header: the first message of an upload must be its header");
}

}  // namespace

absl::Status UploadSession::Fail(absl::Status error) {
  error_ = error;
  writer_.reset();  // the partial blob goes
  return error;
}

absl::Status UploadSession::Begin(const v1::UploadFileHeader& header) {
  RETURN_IF_ERROR(error_);
  if (header_) return Fail(absl::InvalidArgumentError("header: sent twice"));
  if (absl::Status st = CheckHeader(header); !st.ok()) return Fail(st);
  const int64_t max_bytes = deps_.options.max_upload_bytes;
  if (header.bytes() > max_bytes) {
    return Fail(absl::ResourceExhaustedError(
        absl::StrCat("bytes: ", header.bytes(), " exceeds max_upload_bytes (",
                     max_bytes, ")")));
  }
  auto writer = deps_.blobs->NewWriter();
  if (!writer.ok()) return Fail(writer.status());
  header_ = header;
  writer_ = *std::move(writer);
  validator_.emplace(JsonlValidator::Limits{
      .max_line_bytes = deps_.options.max_line_bytes,
      .max_examples = deps_.options.max_examples_per_file});
  return absl::OkStatus();
}

absl::Status UploadSession::Add(absl::string_view chunk) {
  RETURN_IF_ERROR(error_);
  if (!header_) return Fail(MissingHeader());
  const int64_t max_bytes = deps_.options.max_upload_bytes;
  if (writer_->bytes() + static_cast<int64_t>(chunk.size()) > max_bytes) {
    return Fail(absl::ResourceExhaustedError(
        absl::StrCat("file exceeds max_upload_bytes (", max_bytes, " bytes)")));
  }
  if (absl::Status st = validator_->Feed(chunk); !st.ok()) return Fail(st);
  if (absl::Status st = writer_->Append(chunk); !st.ok()) return Fail(st);
  return absl::OkStatus();
}

absl::Status UploadSession::Abort() {
  RETURN_IF_ERROR(error_);
  return Fail(absl::CancelledError(
      "the upload was cancelled or ran past its deadline before the client "
      "finished it; nothing stored"));
}

absl::StatusOr<v1::File> UploadSession::Finish() {
  RETURN_IF_ERROR(error_);
  if (!header_) return Fail(MissingHeader());
  if (absl::Status st = validator_->Finish(); !st.ok()) return Fail(st);
  if (header_->bytes() > 0 && header_->bytes() != writer_->bytes()) {
    return Fail(absl::DataLossError(absl::StrCat(
        "bytes: the header announced ", header_->bytes(), " bytes but ",
        writer_->bytes(), " arrived (interrupted upload?)")));
  }
  v1::File file;
  file.set_bytes(writer_->bytes());
  auto sha = writer_->Commit(absl::AsciiStrToLower(header_->sha256()));
  if (!sha.ok()) return Fail(sha.status());
  file.set_id(NewId("file"));
  file.set_created_at(NowUnixSeconds());
  file.set_filename(header_->filename());
  file.set_purpose(header_->purpose());
  file.set_sha256(*sha);
  file.set_line_count(validator_->examples());
  file.set_format(validator_->format());
  file.set_project(caller_.project);
  absl::Status inserted = deps_.store->InsertFile(file);
  // Unpinned before a delete waits for pins, and within this call: a
  // committed Writer pins its blob on the thread that committed it.
  writer_.reset();
  if (!inserted.ok()) {
    RemoveBlobIfUnreferenced(deps_, *sha);
    return Fail(inserted);
  }
  error_ = absl::FailedPreconditionError("upload: already finished");
  spdlog::info("stored {} ({}, {} bytes, {} examples)", file.id(),
               file.filename(), file.bytes(), file.line_count());
  return file;
}

}  // namespace lathe
