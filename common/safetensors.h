// The safetensors file format, without LibTorch: an 8-byte little-endian
// header length N, N bytes of JSON, then the raw tensor bytes. The JSON maps
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the start of the data section) and may hold a
// "__metadata__" object of string -> string.
//
// Reading validates everything a later reader would trust (sizes, offsets,
// dtypes) and names the file and the field in each error. Writing is atomic:
// a temp file beside the target, fsync, rename.
#ifndef LATHE_COMMON_SAFETENSORS_H_
#define LATHE_COMMON_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace lathe::safetensors {

enum class Dtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32" -> kF32 etc.; INVALID_ARGUMENT for a name the format does not define.
absl::StatusOr<Dtype> ParseDtype(std::string_view name);
// kF32 -> "F32".
std::string_view DtypeName(Dtype dtype);
// Bytes per element: 4 for kF32.
size_t DtypeSize(Dtype dtype);

struct TensorInfo {
  std::string name;  // "model.norm.weight"
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;  // [64]; empty for a scalar
  uint64_t begin = 0;          // byte offsets into the data section
  uint64_t end = 0;

  int64_t numel() const;
};

struct Header {
  std::vector<TensorInfo> tensors;  // in file (data offset) order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data section (8 + N)

  // The tensor called `name`, or nullptr.
  const TensorInfo* Find(std::string_view name) const;
};

// Parses and validates the JSON header of a file whose data section holds
// `data_size` bytes. `source` names the file in errors. DATA_LOSS when
// malformed: not JSON, unknown dtype, negative shape, offsets out of range,
// overlapping, leaving holes, or not matching shape * dtype size.
absl::StatusOr<Header> ParseHeader(std::string_view json, uint64_t data_size,
                                   std::string_view source);

// Reads and validates the header of the file at `path`. NOT_FOUND when the
// file cannot be opened, DATA_LOSS when it is malformed.
absl::StatusOr<Header> ReadHeaderFile(const std::string& path);

// A read-only memory mapping of a validated safetensors file.
// Thread-compatible; the spans it returns live as long as the object.
class MappedFile {
 public:
  // Maps `path` and validates its header (errors as ReadHeaderFile).
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(
      const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const Header& header() const { return header_; }
  // The bytes of `tensor`. REQUIRES: `tensor` is one of header().tensors.
  absl::Span<const std::byte> Data(const TensorInfo& tensor) const;

 private:
  MappedFile(std::string path, const std::byte* base, size_t size,
             Header header);

  const std::string path_;
  const std::byte* const base_;
  const size_t size_;
  const Header header_;
};

// A tensor to write: its bytes are borrowed and must outlive WriteFile.
struct TensorView {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  absl::Span<const std::byte> data;  // row-major, little-endian
};

// Writes `tensors` (in the given order) and `metadata` to `path` atomically.
// INVALID_ARGUMENT when a name repeats or a tensor's byte count does not
// match its shape and dtype; INTERNAL on I/O failure.
absl::Status WriteFile(const std::string& path,
                       const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace lathe::safetensors

#endif  // LATHE_COMMON_SAFETENSORS_H_
