#include "worker/engine/adapters/peft_folder.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {

absl::Status WritePeftFolder(const std::string& dir,
                             const nlohmann::json& config,
                             const TensorMap& tensors) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", dir, ": ", error.message()));
  }
  RETURN_IF_ERROR(WriteJsonFile(dir + "/adapter_config.json", config));
  return SaveSafetensors(dir + "/adapter_model.safetensors", tensors,
                         {{"format", "pt"}});
}

absl::Status PeftConfigError(const std::string& dir, const std::string& field,
                             const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(
      dir, "/adapter_config.json: field \"", field, "\" ", problem));
}

absl::StatusOr<nlohmann::json> ReadPeftConfig(const std::string& dir,
                                              const std::string& peft_type) {
  ASSIGN_OR_RETURN(nlohmann::json config,
                   ReadJsonFile(dir + "/adapter_config.json"));
  if (config.value("peft_type", "") != peft_type) {
    return PeftConfigError(dir, "peft_type",
                           absl::StrCat("must be \"", peft_type, "\""));
  }
  return config;
}

}  // namespace lathe::engine
