// Fuzzes the model config.json reader (worker/engine/model/model_config.h) with
// arbitrary files: it refuses with INVALID_ARGUMENT, or returns a config
// that holds what it promises to check (positive sizes, key/value heads
// that divide the heads, an even head_dim, a sound rope_scaling).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/fuzz_util.h"
#include "worker/engine/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = lathe::fuzz::ScratchDir();
  lathe::fuzz::WriteFileOrDie(
      dir + "/config.json",
      std::string_view(reinterpret_cast<const char*>(data), size));
  const absl::StatusOr<lathe::engine::ModelConfig> config =
      lathe::engine::LoadModelConfig(dir);
  if (!config.ok()) {
    FUZZ_CHECK(config.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(config->model_type == "llama" || config->model_type == "mistral" ||
             config->model_type == "qwen2");
  FUZZ_CHECK(config->hidden_size > 0 && config->intermediate_size > 0 &&
             config->num_hidden_layers > 0 && config->vocab_size > 0);
  FUZZ_CHECK(config->num_attention_heads > 0 &&
             config->num_key_value_heads > 0 &&
             config->num_attention_heads % config->num_key_value_heads == 0);
  FUZZ_CHECK(config->head_dim > 0 && config->head_dim % 2 == 0);
  FUZZ_CHECK(config->rms_norm_eps > 0 && config->rope_theta > 0);
  if (config->rope_scaling.factor != 0) {
    FUZZ_CHECK(config->rope_scaling.factor > 0 &&
               config->rope_scaling.high_freq_factor >
                   config->rope_scaling.low_freq_factor &&
               config->rope_scaling.original_max_position > 0);
  }
  return 0;
}
