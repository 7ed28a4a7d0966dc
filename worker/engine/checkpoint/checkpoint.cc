#include "worker/engine/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

namespace fs = std::filesystem;
namespace st = ::lathe::safetensors;
using Json = nlohmann::json;

constexpr char kOptimizerPrefix[] = "optimizer/";
constexpr char kTorchRng[] = "rng/torch";
constexpr char kDeviceRng[] = "rng/device";
constexpr char kDataOrder[] = "data/order";

absl::Status Fsync(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  const int rc = fsync(fd);
  const int saved = errno;
  close(fd);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("cannot fsync ", path, ": ", std::strerror(saved)));
  }
  return absl::OkStatus();
}

st::TensorView View(const std::string& name, const torch::Tensor& t) {
  st::Dtype dtype = st::Dtype::kF32;
  if (t.scalar_type() == torch::kUInt8) dtype = st::Dtype::kU8;
  if (t.scalar_type() == torch::kInt64) dtype = st::Dtype::kI64;
  return {name, dtype, t.sizes().vec(),
          absl::Span<const std::byte>(
              static_cast<const std::byte*>(t.data_ptr()), t.nbytes())};
}

}  // namespace

absl::Status WriteTrainerState(const std::string& dir, const TrainerState& s) {
  Json json = {
      {"step", s.step},
      {"total_steps", s.total_steps},
      {"epoch", s.epoch},
      {"cursor", s.cursor},
      {"trained_tokens", s.trained_tokens},
      {"first_loss", s.first_loss},
      {"last_loss", s.last_loss},
      {"data_rng", s.data_rng},
      {"optimizer_steps", s.optimizer_steps},
      {"fingerprint", s.fingerprint},
  };
  if (!s.selection.is_null()) json["selection"] = s.selection;
  RETURN_IF_ERROR(WriteJsonFile(dir + "/" + kTrainerStateJson, json));
  // Contiguous copies whose bytes outlive WriteFile.
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, t] : s.optimizer) {
    tensors.push_back(
        {kOptimizerPrefix + name,
         t.detach().to(torch::kCPU, torch::kFloat32).contiguous()});
  }
  tensors.push_back({kTorchRng, s.torch_rng.contiguous()});
  if (s.device_rng.defined()) {
    tensors.push_back({kDeviceRng, s.device_rng.to(torch::kCPU).contiguous()});
  }
  tensors.push_back(
      {kDataOrder,
       torch::tensor(s.data_order, torch::kInt64).reshape({-1}).contiguous()});
  std::vector<st::TensorView> views;
  for (const auto& [name, t] : tensors) views.push_back(View(name, t));
  return st::WriteFile(dir + "/" + kTrainerStateTensors, views, {});
}

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& dir) {
  const std::string json_path = dir + "/" + kTrainerStateJson;
  const std::string tensors_path = dir + "/" + kTrainerStateTensors;
  if (!fs::exists(json_path)) {
    return absl::NotFoundError(absl::StrCat(
        dir, " is not a checkpoint: ", kTrainerStateJson, " is missing"));
  }
  absl::StatusOr<Json> json = ReadJsonFile(json_path);
  if (!json.ok() || !json->is_object()) {
    return absl::DataLossError(
        absl::StrCat(json_path, " is not a JSON object"));
  }
  TrainerState s;
  auto field = [&](const char* name, auto* out) -> absl::Status {
    using T = std::remove_pointer_t<decltype(out)>;
    auto it = json->find(name);
    bool ok = it != json->end();
    if (ok) {
      if constexpr (std::is_same_v<T, std::string>) {
        ok = it->is_string();
      } else if constexpr (std::is_floating_point_v<T>) {
        ok = it->is_number();
      } else if constexpr (std::is_same_v<T, Json>) {
        ok = it->is_object();
      } else {
        ok = it->is_number_integer();
      }
    }
    if (!ok) {
      return absl::DataLossError(absl::StrCat(json_path, ": field \"", name,
                                              "\" is missing or malformed"));
    }
    *out = it->get<T>();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(field("step", &s.step));
  RETURN_IF_ERROR(field("total_steps", &s.total_steps));
  RETURN_IF_ERROR(field("epoch", &s.epoch));
  RETURN_IF_ERROR(field("cursor", &s.cursor));
  RETURN_IF_ERROR(field("trained_tokens", &s.trained_tokens));
  RETURN_IF_ERROR(field("first_loss", &s.first_loss));
  RETURN_IF_ERROR(field("last_loss", &s.last_loss));
  RETURN_IF_ERROR(field("data_rng", &s.data_rng));
  RETURN_IF_ERROR(field("optimizer_steps", &s.optimizer_steps));
  RETURN_IF_ERROR(field("fingerprint", &s.fingerprint));
  if (json->contains("selection")) {
    RETURN_IF_ERROR(field("selection", &s.selection));
  }

  if (!fs::exists(tensors_path)) {
    return absl::NotFoundError(absl::StrCat(
        dir, " is not a complete checkpoint: ", kTrainerStateTensors,
        " is missing"));
  }
  absl::StatusOr<std::unique_ptr<st::MappedFile>> file =
      st::MappedFile::Open(tensors_path);
  if (!file.ok()) return absl::DataLossError(file.status().message());
  auto malformed = [&](const std::string& name) {
    return absl::DataLossError(absl::StrCat(tensors_path, ": tensor \"", name,
                                            "\" is missing or malformed"));
  };
  bool have_rng = false, have_order = false;
  for (const st::TensorInfo& info : (*file)->header().tensors) {
    absl::Span<const std::byte> data = (*file)->Data(info);
    void* bytes = const_cast<std::byte*>(data.data());
    if (info.name == kTorchRng) {
      if (info.dtype != st::Dtype::kU8) return malformed(info.name);
      s.torch_rng = torch::from_blob(bytes, info.shape, torch::kUInt8).clone();
      have_rng = true;
    } else if (info.name == kDeviceRng) {
      if (info.dtype != st::Dtype::kU8) return malformed(info.name);
      s.device_rng =
          torch::from_blob(bytes, info.shape, torch::kUInt8).clone();
    } else if (info.name == kDataOrder) {
      if (info.dtype != st::Dtype::kI64 || info.shape.size() != 1) {
        return malformed(info.name);
      }
      const auto* order = reinterpret_cast<const int64_t*>(data.data());
      s.data_order.assign(order, order + info.shape[0]);
      have_order = true;
    } else if (info.name.starts_with(kOptimizerPrefix) &&
               info.dtype == st::Dtype::kF32) {
      s.optimizer[info.name.substr(std::strlen(kOptimizerPrefix))] =
          torch::from_blob(bytes, info.shape, torch::kFloat32).clone();
    } else {
      return malformed(info.name);
    }
  }
  if (!have_rng) return malformed(kTorchRng);
  if (!have_order) return malformed(kDataOrder);
  return s;
}

absl::Status CheckFingerprint(const Json& checkpoint, const Json& run) {
  for (const auto& [field, value] : run.items()) {
    auto it = checkpoint.find(field);
    if (it == checkpoint.end() || *it != value) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot resume: option \"", field, "\" was ",
                       it == checkpoint.end() ? "absent" : it->dump(),
                       " in the checkpoint but is ", value.dump(), " now"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> CommitDirectory(
    const std::string& temp, const std::string& dir) {
  std::vector<std::string> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(temp, error)) {
    if (!entry.is_regular_file()) continue;
    RETURN_IF_ERROR(Fsync(entry.path().string()));
    files.push_back(entry.path().filename().string());
  }
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot list ", temp, ": ", error.message()));
  }
  std::sort(files.begin(), files.end());
  RETURN_IF_ERROR(Fsync(temp));
  fs::remove_all(dir, error);
  if (!error) fs::rename(temp, dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot rename ", temp, " to ", dir,
                                            ": ", error.message()));
  }
  const fs::path parent = fs::absolute(dir).parent_path();
  RETURN_IF_ERROR(Fsync(parent.string()));
  return files;
}

}  // namespace lathe::engine
