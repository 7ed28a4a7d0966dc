#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace lathe::safetensors {
namespace {

using Json = nlohmann::json;

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DtypeEntry, 10> kDtypes = {{
    {Dtype::kF64, "F64", 8},
    {Dtype::kF32, "F32", 4},
    {Dtype::kF16, "F16", 2},
    {Dtype::kBF16, "BF16", 2},
    {Dtype::kI64, "I64", 8},
    {Dtype::kI32, "I32", 4},
    {Dtype::kI16, "I16", 2},
    {Dtype::kI8, "I8", 1},
    {Dtype::kU8, "U8", 1},
    {Dtype::kBool, "BOOL", 1},
}};

// The format's own cap (the reference implementation refuses larger headers).
constexpr uint64_t kMaxHeaderSize = 100'000'000;

const DtypeEntry& EntryFor(Dtype dtype) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.dtype == dtype) return entry;
  }
  return kDtypes[1];  // unreachable: every enumerator is in the table
}

absl::Status Malformed(std::string_view source, std::string_view what) {
  return absl::DataLossError(absl::StrCat(
      "safetensors file ", std::string(source), ": ", std::string(what)));
}

// Byte count of `shape` elements of `dtype_size` bytes, or nullopt on overflow.
std::optional<uint64_t> ByteCount(const std::vector<int64_t>& shape,
                                  size_t dtype_size) {
  uint64_t bytes = dtype_size;
  for (int64_t dim : shape) {
    const auto d = static_cast<uint64_t>(dim);
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / d) {
      return std::nullopt;
    }
    bytes *= d;
  }
  return bytes;
}

absl::StatusOr<TensorInfo> ParseTensor(const std::string& name,
                                       const Json& entry,
                                       std::string_view source) {
  const std::string where = absl::StrCat("tensor \"", name, "\"");
  if (!entry.is_object()) {
    return Malformed(source, absl::StrCat(where, " is not a JSON object"));
  }
  TensorInfo info;
  info.name = name;

  auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) {
    return Malformed(source, absl::StrCat(where, ": missing string \"dtype\""));
  }
  absl::StatusOr<Dtype> parsed = ParseDtype(dtype->get<std::string>());
  if (!parsed.ok()) {
    return Malformed(
        source,
        absl::StrCat(where, ": field \"dtype\": ", parsed.status().message()));
  }
  info.dtype = *parsed;

  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) {
    return Malformed(source, absl::StrCat(where, ": missing array \"shape\""));
  }
  for (const Json& dim : *shape) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
      // Not dump() for an array or object: it recurses once per nesting
      // level, and a deeply nested one would overflow the stack.
      const std::string got =
          dim.is_structured() ? std::string(dim.type_name()) : dim.dump();
      return Malformed(source,
                       absl::StrCat(where, ": field \"shape\" has ", got,
                                    ", not a non-negative integer"));
    }
    info.shape.push_back(dim.get<int64_t>());
  }

  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    return Malformed(source,
                     absl::StrCat(where,
                                  ": field \"data_offsets\" must be two "
                                  "non-negative integers [begin, end]"));
  }
  info.begin = (*offsets)[0].get<uint64_t>();
  info.end = (*offsets)[1].get<uint64_t>();
  if (info.begin > info.end) {
    return Malformed(
        source, absl::StrCat(where, ": field \"data_offsets\" [", info.begin,
                             ", ", info.end, "] has begin > end"));
  }
  std::optional<uint64_t> bytes = ByteCount(info.shape, DtypeSize(info.dtype));
  if (!bytes.has_value() || *bytes != info.end - info.begin) {
    return Malformed(
        source,
        absl::StrCat(where, ": field \"data_offsets\" spans ",
                     info.end - info.begin, " bytes but shape and dtype need ",
                     bytes.has_value() ? absl::StrCat(*bytes) : "too many"));
  }
  return info;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(
    const Json& entry, std::string_view source) {
  if (!entry.is_object()) {
    return Malformed(source, "field \"__metadata__\" is not a JSON object");
  }
  std::map<std::string, std::string> metadata;
  for (const auto& [key, value] : entry.items()) {
    if (!value.is_string()) {
      return Malformed(source,
                       absl::StrCat("field \"__metadata__\": value of \"", key,
                                    "\" is not a string"));
    }
    metadata[key] = value.get<std::string>();
  }
  return metadata;
}

// Reads the 8-byte length prefix and checks it against the file size.
absl::StatusOr<uint64_t> HeaderLength(const std::byte* prefix,
                                      uint64_t file_size,
                                      std::string_view source) {
  if (file_size < 8) {
    return Malformed(source, absl::StrCat("only ", file_size,
                                          " bytes, shorter than the 8-byte "
                                          "header length"));
  }
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) {
    length = (length << 8) | std::to_integer<uint64_t>(prefix[i]);
  }
  if (length > kMaxHeaderSize || length > file_size - 8) {
    return Malformed(
        source, absl::StrCat("header length ", length,
                             " goes beyond the file (", file_size, " bytes)"));
  }
  return length;
}

// Closes a file descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

absl::Status ErrnoError(std::string_view what, std::string_view path) {
  const int err = errno;
  std::string message = absl::StrCat(std::string(what), " ", std::string(path),
                                     ": ", strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  return absl::InternalError(message);
}

absl::Status WriteAll(int fd, const void* data, size_t size,
                      std::string_view path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Dtype> ParseDtype(std::string_view name) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.name == name) return entry.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown safetensors dtype \"", std::string(name), "\""));
}

std::string_view DtypeName(Dtype dtype) { return EntryFor(dtype).name; }

size_t DtypeSize(Dtype dtype) { return EntryFor(dtype).size; }

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorInfo* Header::Find(std::string_view name) const {
  for (const TensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<Header> ParseHeader(std::string_view json, uint64_t data_size,
                                   std::string_view source) {
  Json root = Json::parse(json, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Malformed(source, "header is not valid JSON");
  if (!root.is_object()) {
    return Malformed(source, "header is not a JSON object");
  }
  Header header;
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      ASSIGN_OR_RETURN(header.metadata, ParseMetadata(entry, source));
      continue;
    }
    ASSIGN_OR_RETURN(TensorInfo info, ParseTensor(name, entry, source));
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
            });
  // The tensors must tile the data section exactly: no overlap, no hole.
  uint64_t expected = 0;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin < expected) {
      return Malformed(source, absl::StrCat("tensor \"", t.name,
                                            "\": field \"data_offsets\" "
                                            "overlaps the previous tensor"));
    }
    if (t.begin > expected) {
      return Malformed(source, absl::StrCat("tensor \"", t.name,
                                            "\": field \"data_offsets\" "
                                            "leaves a hole before byte ",
                                            t.begin));
    }
    expected = t.end;
  }
  if (expected != data_size) {
    return Malformed(source, absl::StrCat("tensors cover ", expected,
                                          " bytes but the data section holds ",
                                          data_size, " bytes"));
  }
  return header;
}

absl::StatusOr<Header> ReadHeaderFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  return file->header();
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  FdCloser closer(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoError("cannot stat", path);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    std::byte none[8] = {};
    return HeaderLength(none, size, path).status();
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) return ErrnoError("cannot mmap", path);
  const auto* base = static_cast<const std::byte*>(map);
  absl::StatusOr<uint64_t> length = HeaderLength(base, size, path);
  absl::StatusOr<Header> header =
      length.ok()
          ? ParseHeader(std::string_view(
                            reinterpret_cast<const char*>(base) + 8, *length),
                        size - 8 - *length, path)
          : absl::StatusOr<Header>(length.status());
  if (!header.ok()) {
    munmap(map, size);
    return header.status();
  }
  header->data_start = 8 + *length;
  return std::unique_ptr<MappedFile>(
      new MappedFile(path, base, size, *std::move(header)));
}

MappedFile::MappedFile(std::string path, const std::byte* base, size_t size,
                       Header header)
    : path_(std::move(path)),
      base_(base),
      size_(size),
      header_(std::move(header)) {}

MappedFile::~MappedFile() { munmap(const_cast<std::byte*>(base_), size_); }

absl::Span<const std::byte> MappedFile::Data(const TensorInfo& tensor) const {
  return absl::Span<const std::byte>(base_ + header_.data_start + tensor.begin,
                                     tensor.end - tensor.begin);
}

absl::Status WriteFile(const std::string& path,
                       const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path, ": tensor name \"", t.name,
                       "\" is repeated or reserved"));
    }
    std::optional<uint64_t> bytes = ByteCount(t.shape, DtypeSize(t.dtype));
    if (std::any_of(t.shape.begin(), t.shape.end(),
                    [](int64_t d) { return d < 0; }) ||
        !bytes.has_value() || *bytes != t.data.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot write ", path, ": tensor \"", t.name, "\" has ",
          t.data.size(), " bytes, which does not match its shape and dtype"));
    }
    header[t.name] = {{"dtype", DtypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + *bytes}}};
    offset += *bytes;
  }
  std::string json = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the
  // reference writer does.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::array<unsigned char, 8> prefix;
  for (int i = 0; i < 8; ++i) {
    prefix[i] = static_cast<unsigned char>(uint64_t{json.size()} >> (8 * i));
  }

  std::string temp = path + ".tmp.XXXXXX";
  const int fd = mkstemp(temp.data());
  if (fd < 0) return ErrnoError("cannot create a temp file for", path);
  FdCloser closer(fd);
  // mkstemp creates 0600; the file is meant to be shared like any model file.
  absl::Status status = fchmod(fd, 0644) == 0
                            ? absl::OkStatus()
                            : ErrnoError("cannot chmod", temp);
  if (status.ok()) status = WriteAll(fd, prefix.data(), prefix.size(), temp);
  if (status.ok()) status = WriteAll(fd, json.data(), json.size(), temp);
  for (const TensorView& t : tensors) {
    if (!status.ok()) break;
    status = WriteAll(fd, t.data.data(), t.data.size(), temp);
  }
  if (status.ok() && fsync(fd) != 0) status = ErrnoError("cannot fsync", temp);
  if (status.ok() && close(closer.Release()) != 0) {
    status = ErrnoError("cannot close", temp);
  }
  if (status.ok() && rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoError("cannot rename to", path);
  }
  if (!status.ok()) unlink(temp.c_str());
  return status;
}

}  // namespace lathe::safetensors
