#include "server/store/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/status_macros.h"

namespace lathe::store {
namespace {

namespace fs = std::filesystem;

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  int e = errno;
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(e));
  // Out of space, over quota, or past the file size limit (RLIMIT_FSIZE,
  // with SIGXFSZ ignored): the write may work later, once space is freed.
  if (e == ENOSPC || e == EDQUOT || e == EFBIG) {
    return absl::ResourceExhaustedError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return ErrnoError("open", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync", dir);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<BlobStore>> BlobStore::Open(
    const std::string& root) {
  std::error_code ec;
  fs::create_directories(fs::path(root) / "blobs", ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", root, ": ", ec.message()));
  fs::path tmp = fs::path(root) / "tmp";
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", tmp.string(), ": ", ec.message()));
  return std::unique_ptr<BlobStore>(new BlobStore(root));
}

absl::StatusOr<int> BlobStore::RemoveUnreferenced(
    const absl::flat_hash_set<std::string>& keep) const {
  if (keep.empty()) return 0;
  int removed = 0;
  std::error_code ec;
  // The error_code forms throughout: an I/O error is a status, not a throw.
  const fs::directory_iterator end;
  for (fs::directory_iterator dir(fs::path(root_) / "blobs", ec); !ec && dir != end;
       dir.increment(ec)) {
    std::string prefix = dir->path().filename().string();
    std::error_code type_ec;
    if (!dir->is_directory(type_ec) || prefix.size() != 2) continue;
    for (fs::directory_iterator f(dir->path(), ec); !ec && f != end; f.increment(ec)) {
      std::string sha = f->path().filename().string();
      bool blob_name = sha.size() == 64 && sha.compare(0, 2, prefix) == 0 &&
                       sha.find_first_not_of("0123456789abcdef") == std::string::npos;
      if (!blob_name || !f->is_regular_file(type_ec) || keep.contains(sha)) continue;
      if (::unlink(f->path().c_str()) != 0) return ErrnoError("unlink", f->path().string());
      ++removed;
    }
    if (ec) break;
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("listing ", root_, "/blobs: ", ec.message()));
  }
  return removed;
}

absl::StatusOr<std::unique_ptr<BlobStore::Writer>> BlobStore::NewWriter() const {
  std::string tmp = (fs::path(root_) / "tmp" / NewId("blob")).string();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create", tmp);
  return std::unique_ptr<Writer>(new Writer(*this, tmp, fd));
}

std::string BlobStore::PathFor(absl::string_view sha256) const {
  return (fs::path(root_) / "blobs" / std::string(sha256.substr(0, 2)) /
          std::string(sha256))
      .string();
}

bool BlobStore::Exists(absl::string_view sha256) const {
  std::error_code ec;
  return sha256.size() == 64 && fs::exists(PathFor(sha256), ec);
}

absl::Status BlobStore::RemoveIfUnreferenced(
    absl::string_view sha256,
    const std::function<absl::StatusOr<bool>()>& unreferenced) const {
  absl::MutexLock lock(&remove_mu_);
  ASSIGN_OR_RETURN(bool remove, unreferenced());
  if (remove && ::unlink(PathFor(sha256).c_str()) != 0 && errno != ENOENT) {
    return ErrnoError("unlink", PathFor(sha256));
  }
  return absl::OkStatus();
}

BlobStore::Writer::~Writer() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
  if (pinned_) store_.remove_mu_.ReaderUnlock();
}

absl::Status BlobStore::Writer::Append(absl::string_view data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write", tmp_path_);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  hash_.Update(data);
  bytes_ += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> BlobStore::Writer::Commit(
    absl::string_view expect_sha256) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  std::string sha = hash_.HexDigest();
  if (!expect_sha256.empty() && expect_sha256 != sha) {
    return absl::DataLossError(absl::StrCat(
        "sha256 mismatch: expected ", expect_sha256, ", received ", sha));
  }
  // A failed fsync leaves the page cache in an unknown state: the blob is
  // abandoned, never retried as if it had worked.
  if (::fsync(fd_) != 0) return ErrnoError("fsync", tmp_path_);
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return ErrnoError("close", tmp_path_);
  std::string final_path = store_.PathFor(sha);
  std::string dir = fs::path(final_path).parent_path().string();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", dir, ": ", ec.message()));
  // From here a blob of this name may be one a record is about to name.
  store_.remove_mu_.ReaderLock();
  pinned_ = true;
  if (::rename(tmp_path_.c_str(), final_path.c_str()) != 0) {
    return ErrnoError("rename", final_path);
  }
  committed_ = true;
  RETURN_IF_ERROR(FsyncDir(dir));
  return sha;
}

}  // namespace lathe::store
