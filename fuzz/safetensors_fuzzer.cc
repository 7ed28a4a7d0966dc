// Fuzzes the safetensors reader (common/safetensors.h) with arbitrary file
// contents. A file it accepts must keep every tensor inside the file, and
// must come back unchanged through WriteFile and a second read.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/safetensors.h"
#include "fuzz/fuzz_util.h"

namespace st = lathe::safetensors;

namespace {

// The tensors of `file` by name, with their bytes.
std::map<std::string, std::pair<st::TensorInfo, std::string_view>> ByName(
    const st::MappedFile& file) {
  std::map<std::string, std::pair<st::TensorInfo, std::string_view>> out;
  for (const st::TensorInfo& t : file.header().tensors) {
    const auto data = file.Data(t);
    out[t.name] = {t,
                   std::string_view(reinterpret_cast<const char*>(data.data()),
                                    data.size())};
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lathe::fuzz::ScratchDir() + "/model.safetensors";
  lathe::fuzz::WriteFileOrDie(
      path, std::string_view(reinterpret_cast<const char*>(data), size));
  absl::StatusOr<std::unique_ptr<st::MappedFile>> file =
      st::MappedFile::Open(path);
  if (!file.ok()) {
    FUZZ_CHECK(file.status().code() == absl::StatusCode::kDataLoss);
    return 0;
  }
  const st::Header& header = (*file)->header();
  FUZZ_CHECK(header.data_start >= 8 && header.data_start <= size);
  std::vector<st::TensorView> views;
  for (const st::TensorInfo& t : header.tensors) {
    FUZZ_CHECK(t.begin <= t.end && t.end <= size - header.data_start);
    FUZZ_CHECK(header.Find(t.name) == &t);
    const auto bytes = (*file)->Data(t);
    FUZZ_CHECK(bytes.size() ==
               static_cast<size_t>(t.numel()) * st::DtypeSize(t.dtype));
    views.push_back({t.name, t.dtype, t.shape, bytes});
  }

  const std::string copy_path = lathe::fuzz::ScratchDir() + "/copy.safetensors";
  FUZZ_CHECK(st::WriteFile(copy_path, views, header.metadata).ok());
  absl::StatusOr<std::unique_ptr<st::MappedFile>> copy =
      st::MappedFile::Open(copy_path);
  FUZZ_CHECK(copy.ok());
  FUZZ_CHECK((*copy)->header().metadata == header.metadata);
  const auto before = ByName(**file);
  const auto after = ByName(**copy);
  FUZZ_CHECK(before.size() == after.size());
  for (const auto& [name, tensor] : before) {
    const auto it = after.find(name);
    FUZZ_CHECK(it != after.end());
    const auto& [info, bytes] = it->second;
    FUZZ_CHECK(info.dtype == tensor.first.dtype &&
               info.shape == tensor.first.shape && bytes == tensor.second);
  }
  return 0;
}
