#include "worker/engine/model/model_export.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/model/weights.h"

namespace lathe::engine {

absl::Status CopyModelFolderFiles(const std::string& source_dir,
                                  const std::string& out_dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::create_directories(out_dir, error);
  for (const fs::directory_entry& entry :
       fs::directory_iterator(source_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.ends_with(".safetensors") ||
        name == "model.safetensors.index.json") {
      continue;
    }
    fs::copy_file(entry.path(), fs::path(out_dir) / name,
                  fs::copy_options::overwrite_existing, error);
    if (error) break;
  }
  if (error) {
    return absl::InternalError(absl::StrCat("cannot copy ", source_dir, " to ",
                                            out_dir, ": ", error.message()));
  }
  return absl::OkStatus();
}

absl::Status SaveModelFolder(const LlamaModel& model,
                             const std::string& source_dir,
                             const std::string& out_dir,
                             torch::ScalarType dtype) {
  RETURN_IF_ERROR(CopyModelFolderFiles(source_dir, out_dir));
  return SaveSafetensors(out_dir + "/model.safetensors",
                         model.Weights(/*merge_lora=*/true), {{"format", "pt"}},
                         dtype);
}

}  // namespace lathe::engine
