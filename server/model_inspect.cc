#include "server/model_inspect.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kArchitectures[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                          "Qwen2ForCausalLM"};

absl::Status Bad(const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

// The files worth copying to a worker: config, weights, tokenizer.
bool IsModelFile(const std::string& name) {
  static const std::set<std::string> kNames = {
      "config.json", "generation_config.json", "tokenizer.json",
      "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
      "model.safetensors.index.json"};
  return kNames.count(name) > 0 ||
         (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors");
}

// OK unless `file` (in `dir`, canonical) is a symbolic link whose target is
// outside `dir`: what a model folder names is hashed, listed and served to
// workers, so a link to ../secret.txt must not make it one of its files.
absl::Status CheckStaysInside(const fs::path& dir, const fs::path& file) {
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(file, ec))) return absl::OkStatus();
  fs::path target = fs::weakly_canonical(file, ec);
  if (ec) return Bad(file.string(), "an unreadable symbolic link");
  auto [d, t] =
      std::mismatch(dir.begin(), dir.end(), target.begin(), target.end());
  if (d == dir.end() && t != target.end()) return absl::OkStatus();
  return Bad(
      file.string(),
      absl::StrCat("a symbolic link out of the model folder (to ",
                   target.string(),
                   "); copy the files into the folder, or register the folder "
                   "they are in"));
}

// A positive integer field of config.json, or `absent` when it has none.
absl::StatusOr<int64_t> OptionalPositive(const json& config, const char* field,
                                         const std::string& config_path,
                                         int64_t absent) {
  auto it = config.find(field);
  if (it == config.end()) return absent;
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return Bad(config_path, absl::StrCat(field, ": not a positive integer"));
  }
  return it->get<int64_t>();
}

// The layer shapes for the memory estimate, with the engine's defaults
// (model_config.cc) for the fields a config may omit. A config without
// intermediate_size or num_attention_heads leaves them 0: the engine refuses
// it at setup, and lathed estimates its jobs as full fine-tuning.
absl::Status ReadLayerShape(const json& config, const std::string& config_path,
                            v1::Model& m) {
  ASSIGN_OR_RETURN(
      int64_t intermediate,
      OptionalPositive(config, "intermediate_size", config_path, 0));
  ASSIGN_OR_RETURN(
      int64_t heads,
      OptionalPositive(config, "num_attention_heads", config_path, 0));
  if (heads == 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(
      int64_t kv_heads,
      OptionalPositive(config, "num_key_value_heads", config_path, heads));
  ASSIGN_OR_RETURN(int64_t head_dim,
                   OptionalPositive(config, "head_dim", config_path,
                                    m.hidden_size() / heads));
  auto tied = config.find("tie_word_embeddings");
  if (tied != config.end() && !tied->is_boolean()) {
    return Bad(config_path, "tie_word_embeddings: not a boolean");
  }
  m.set_intermediate_size(intermediate);
  m.set_num_attention_heads(heads);
  m.set_num_key_value_heads(kv_heads);
  m.set_head_dim(head_dim);
  m.set_tie_word_embeddings(tied != config.end() && tied->get<bool>());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::Model> InspectModelFolder(const std::string& folder) {
  std::error_code ec;
  if (!fs::path(folder).is_absolute())
    return Bad("path", "must be an absolute folder");
  if (!fs::is_directory(folder, ec))
    return Bad("path", absl::StrCat(folder, " is not a folder"));
  // The folder itself may be reached through links; its files may not
  // lead out of it.
  fs::path dir = fs::canonical(folder, ec);
  if (ec) return Bad("path", absl::StrCat(folder, ": ", ec.message()));
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (IsModelFile(entry.path().filename().string())) {
      RETURN_IF_ERROR(CheckStaysInside(dir, entry.path()));
    }
  }
  if (ec) return Bad("path", absl::StrCat(folder, ": ", ec.message()));
  std::string config_path = (dir / "config.json").string();
  std::ifstream in(config_path);
  if (!in) return Bad(config_path, "missing or unreadable");
  json config = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) return Bad(config_path, "not valid JSON");
  v1::Model m;
  m.set_kind("base");
  m.set_path(fs::path(folder).lexically_normal().string());
  auto arch = config.find("architectures");
  if (arch == config.end() || !arch->is_array() || arch->empty() ||
      !(*arch)[0].is_string()) {
    return Bad(config_path, "architectures: missing");
  }
  m.set_architecture((*arch)[0].get<std::string>());
  if (std::find(std::begin(kArchitectures), std::end(kArchitectures),
                m.architecture()) == std::end(kArchitectures)) {
    return Bad(config_path, absl::StrCat("architectures: \"", m.architecture(),
                                         "\" is not supported (Llama, Mistral, Qwen2)"));
  }
  for (const auto& [field, setter] :
       std::vector<std::pair<const char*, void (v1::Model::*)(int64_t)>>{
           {"hidden_size", &v1::Model::set_hidden_size},
           {"num_hidden_layers", &v1::Model::set_num_layers},
           {"vocab_size", &v1::Model::set_vocab_size}}) {
    auto it = config.find(field);
    if (it == config.end() || !it->is_number_integer() || it->get<int64_t>() <= 0) {
      return Bad(config_path, absl::StrCat(field, ": missing or not a positive integer"));
    }
    (m.*setter)(it->get<int64_t>());
  }
  RETURN_IF_ERROR(ReadLayerShape(config, config_path, m));

  // Weights: one file, or the shards an index names.
  std::vector<std::string> shards;
  std::string index_path = (dir / "model.safetensors.index.json").string();
  if (fs::exists(dir / "model.safetensors")) {
    shards.push_back("model.safetensors");
  } else if (fs::exists(index_path)) {
    std::ifstream idx(index_path);
    json index = json::parse(idx, nullptr, false);
    auto wm = index.is_object() ? index.find("weight_map") : index.end();
    if (wm == index.end() || !wm->is_object()) {
      return Bad(index_path, "weight_map: missing");
    }
    std::set<std::string> unique;
    for (const auto& [tensor, file] : wm->items()) {
      if (!file.is_string()) return Bad(index_path, absl::StrCat("weight_map.", tensor));
      unique.insert(file.get<std::string>());
    }
    shards.assign(unique.begin(), unique.end());
  } else {
    return Bad(folder, "no model.safetensors or model.safetensors.index.json");
  }
  int64_t params = 0;
  int bytes_per_weight = 0;
  for (const std::string& shard : shards) {
    if (shard.find('/') != std::string::npos || shard == "..") {
      return Bad(index_path, absl::StrCat("weight_map names a file outside the folder: ", shard));
    }
    auto header = safetensors::ReadHeaderFile((dir / shard).string());
    if (!header.ok()) {
      return absl::InvalidArgumentError(header.status().message());
    }
    for (const auto& t : header->tensors) {
      params += t.numel();
      bytes_per_weight = std::max<int>(bytes_per_weight,
                                       static_cast<int>(safetensors::DtypeSize(t.dtype)));
    }
  }
  m.set_parameter_count(params);
  m.set_bytes_per_weight(bytes_per_weight);

  // Hash every file a worker needs, in name order.
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && IsModelFile(name)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  int64_t total = 0;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(std::string sha, Sha256File((dir / name).string()));
    auto* f = m.add_files();
    f->set_name(name);
    f->set_bytes(static_cast<int64_t>(fs::file_size(dir / name, ec)));
    f->set_sha256(sha);
    total += f->bytes();
  }
  m.set_bytes(total);
  m.set_content_sha256(ContentSha256(m));
  return m;
}

std::string ContentSha256(const v1::Model& model) {
  Sha256 h;
  for (const auto& f : model.files()) {
    h.Update(absl::StrCat(f.name(), "\t", f.bytes(), "\t", f.sha256(), "\n"));
  }
  return h.HexDigest();
}

}  // namespace lathe
