#include "worker/engine/model/weights.h"

#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

namespace st = ::lathe::safetensors;

absl::StatusOr<torch::ScalarType> TorchType(const st::TensorInfo& info,
                                            const std::string& path) {
  switch (info.dtype) {
    case st::Dtype::kF32:
      return torch::kFloat32;
    case st::Dtype::kF16:
      return torch::kFloat16;
    case st::Dtype::kBF16:
      return torch::kBFloat16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", info.name, "\" has dtype ",
                       std::string(st::DtypeName(info.dtype)),
                       "; only F32, F16 and BF16 weights are supported"));
  }
}

// `info`'s tensor of `file` as a float32 CPU tensor, copied out of the
// read-only mapping.
absl::StatusOr<torch::Tensor> ToFloat32(const st::MappedFile& file,
                                        const st::TensorInfo& info) {
  ASSIGN_OR_RETURN(torch::ScalarType type, TorchType(info, file.path()));
  absl::Span<const std::byte> data = file.Data(info);
  // from_blob does not copy; to()/clone() copies out of the mapping.
  torch::Tensor view = torch::from_blob(const_cast<std::byte*>(data.data()),
                                        info.shape, torch::dtype(type));
  return type == torch::kFloat32 ? view.clone() : view.to(torch::kFloat32);
}

}  // namespace

absl::StatusOr<TensorMap> LoadSafetensors(const std::string& path,
                                          bool int64_indices) {
  ASSIGN_OR_RETURN(std::unique_ptr<st::MappedFile> file,
                   st::MappedFile::Open(path));
  TensorMap out;
  for (const st::TensorInfo& info : file->header().tensors) {
    if (int64_indices && info.dtype == st::Dtype::kI64) {  // kept as they are
      absl::Span<const std::byte> data = file->Data(info);
      out[info.name] = torch::from_blob(const_cast<std::byte*>(data.data()),
                                        info.shape, torch::dtype(torch::kInt64))
                           .clone();
      continue;
    }
    ASSIGN_OR_RETURN(out[info.name], ToFloat32(*file, info));
  }
  return out;
}

absl::StatusOr<TensorMap> LoadModelWeights(const std::string& model_dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeightsReader> reader,
                   ModelWeightsReader::Open(model_dir));
  TensorMap out;
  for (const auto& [name, shape] : reader->shapes()) {
    ASSIGN_OR_RETURN(out[name], reader->Read(name));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ModelWeightsReader>> ModelWeightsReader::Open(
    const std::string& model_dir) {
  std::vector<std::string> paths;
  const std::string single = model_dir + "/model.safetensors";
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  if (std::filesystem::exists(single) || !std::filesystem::exists(index_path)) {
    paths.push_back(single);
  } else {
    ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(index_path));
    auto weight_map = index.find("weight_map");
    if (weight_map == index.end() || !weight_map->is_object()) {
      return absl::DataLossError(
          absl::StrCat(index_path, ": field \"weight_map\" is missing"));
    }
    std::set<std::string> shards;
    for (const auto& [name, shard] : weight_map->items()) {
      if (!shard.is_string()) {
        return absl::DataLossError(
            absl::StrCat(index_path, ": field \"weight_map\" entry \"", name,
                         "\" is not a file name"));
      }
      shards.insert(shard.get<std::string>());
    }
    for (const std::string& shard : shards) {
      paths.push_back(model_dir + "/" + shard);
    }
  }
  std::unique_ptr<ModelWeightsReader> reader(new ModelWeightsReader(model_dir));
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(std::unique_ptr<st::MappedFile> file,
                     st::MappedFile::Open(path));
    for (const st::TensorInfo& info : file->header().tensors) {
      if (!reader->locations_.emplace(info.name, Location{file.get(), &info})
               .second) {
        return absl::DataLossError(absl::StrCat(path, ": tensor \"", info.name,
                                                "\" is also in another shard"));
      }
      reader->shapes_[info.name] = info.shape;
    }
    reader->files_.push_back(std::move(file));
  }
  return reader;
}

absl::StatusOr<torch::Tensor> ModelWeightsReader::Read(
    const std::string& name) const {
  auto it = locations_.find(name);
  if (it == locations_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir_, ": tensor \"", name, "\" is missing"));
  }
  return ToFloat32(*it->second.file, *it->second.info);
}

absl::StatusOr<torch::Tensor> TakeTensor(TensorMap& tensors,
                                         const std::string& name,
                                         const std::vector<int64_t>& shape,
                                         const std::string& source) {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tensor \"", name, "\" is missing"));
  }
  if (it->second.sizes().vec() != shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tensor \"", name, "\" has shape [",
                     absl::StrJoin(it->second.sizes(), ", "), "], expected [",
                     absl::StrJoin(shape, ", "), "]"));
  }
  torch::Tensor t = std::move(it->second);
  tensors.erase(it);
  return t;
}

absl::Status SaveSafetensors(const std::string& path, const TensorMap& tensors,
                             const std::map<std::string, std::string>& metadata,
                             torch::ScalarType dtype) {
  st::Dtype file_dtype = st::Dtype::kF32;
  if (dtype == torch::kFloat16) file_dtype = st::Dtype::kF16;
  if (dtype == torch::kBFloat16) file_dtype = st::Dtype::kBF16;
  std::vector<torch::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::vector<st::TensorView> views;
  for (const auto& [name, tensor] : tensors) {
    const bool index = tensor.scalar_type() == torch::kInt64;
    contiguous.push_back(
        tensor.detach().to(torch::kCPU, index ? torch::kInt64 : dtype).contiguous());
    const torch::Tensor& t = contiguous.back();
    views.push_back(
        {name, index ? st::Dtype::kI64 : file_dtype, t.sizes().vec(),
         absl::Span<const std::byte>(
             static_cast<const std::byte*>(t.data_ptr()), t.nbytes())});
  }
  return st::WriteFile(path, views, metadata);
}

absl::StatusOr<torch::ScalarType> ModelWeightsDtype(
    const std::string& model_dir) {
  std::string path = model_dir + "/model.safetensors";
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  if (!std::filesystem::exists(path) && std::filesystem::exists(index_path)) {
    ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(index_path));
    const nlohmann::json& weight_map = index["weight_map"];
    if (!weight_map.is_object() || weight_map.empty() ||
        !weight_map.begin()->is_string()) {
      return absl::DataLossError(
          absl::StrCat(index_path, ": field \"weight_map\" is malformed"));
    }
    path = model_dir + "/" + weight_map.begin()->get<std::string>();
  }
  ASSIGN_OR_RETURN(st::Header header, st::ReadHeaderFile(path));
  if (header.tensors.empty()) return torch::kFloat32;
  return TorchType(header.tensors.front(), path);
}

}  // namespace lathe::engine
