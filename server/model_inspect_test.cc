#include "server/model_inspect.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <vector>

#include "common/safetensors.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;

// A model folder with `config` and one 2 x 3 F32 tensor.
std::string Folder(const std::string& name, const std::string& config) {
  const fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config;
  const std::vector<float> values(6, 1.0f);
  const auto* bytes = reinterpret_cast<const std::byte*>(values.data());
  EXPECT_TRUE(safetensors::WriteFile(
                  (dir / "model.safetensors").string(),
                  {{.name = "lm_head.weight",
                    .dtype = safetensors::Dtype::kF32,
                    .shape = {2, 3},
                    .data = {bytes, values.size() * sizeof(float)}}},
                  {})
                  .ok());
  return dir.string();
}

// The layer shapes the memory estimate reads, with the engine's defaults
// for what a config leaves out.
TEST(ModelInspectTest, ReadsTheLayerShapes) {
  absl::StatusOr<v1::Model> m = InspectModelFolder(Folder(
      "gqa", R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                 "num_hidden_layers": 2, "vocab_size": 100,
                 "intermediate_size": 160, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "tie_word_embeddings": true})"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->parameter_count(), 6);
  EXPECT_EQ(m->intermediate_size(), 160);
  EXPECT_EQ(m->num_attention_heads(), 4);
  EXPECT_EQ(m->num_key_value_heads(), 2);
  EXPECT_EQ(m->head_dim(), 16);  // 64 / 4
  EXPECT_TRUE(m->tie_word_embeddings());

  m = InspectModelFolder(Folder(
      "mha", R"({"architectures": ["MistralForCausalLM"], "hidden_size": 64,
                 "num_hidden_layers": 2, "vocab_size": 100,
                 "intermediate_size": 160, "num_attention_heads": 4,
                 "head_dim": 8})"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->num_key_value_heads(), 4);
  EXPECT_EQ(m->head_dim(), 8);
  EXPECT_FALSE(m->tie_word_embeddings());

  m = InspectModelFolder(Folder(
      "bad", R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                 "num_hidden_layers": 2, "vocab_size": 100,
                 "num_attention_heads": 4, "num_key_value_heads": 0})"));
  EXPECT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_NE(m.status().message().find("num_key_value_heads"),
            std::string::npos)
      << m.status();
}

}  // namespace
}  // namespace lathe
