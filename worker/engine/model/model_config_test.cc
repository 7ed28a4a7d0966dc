#include "worker/engine/model/model_config.h"

#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

Json TinyConfig() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", 64},
          {"intermediate_size", 160},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"vocab_size", 32000}};
}

// The error message for `config`, expecting INVALID_ARGUMENT.
std::string ErrorOf(const Json& config) {
  absl::StatusOr<ModelConfig> parsed = ParseModelConfig(config, "cfg.json");
  EXPECT_FALSE(parsed.ok());
  if (parsed.ok()) return "";
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("cfg.json"), std::string::npos);
  return std::string(parsed.status().message());
}

// config.json's "_name_or_path" is the Hub id when it is one, and nothing
// when it is a local path (or absent, as transformers now saves it).
TEST(ModelConfigTest, HubNameIsNameOrPathWhenItIsAHubId) {
  auto hub_name = [](const Json& value) {
    Json config = TinyConfig();
    if (!value.is_null()) config["_name_or_path"] = value;
    absl::StatusOr<ModelConfig> c = ParseModelConfig(config, "cfg.json");
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->hub_name : "error";
  };
  EXPECT_EQ(hub_name("TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0");
  EXPECT_EQ(hub_name("Qwen/Qwen2.5-0.5B"), "Qwen/Qwen2.5-0.5B");
  EXPECT_EQ(hub_name(Json()), "");
  for (const char* path :
       {"/home/me/models/llama", "./out", "out", "~/m/x", "models/a/b",
        "../x/y", "a/..b", "a/-b", "a/b.", "", "owner/", "/name"}) {
    EXPECT_EQ(hub_name(path), "") << path;
  }
  EXPECT_EQ(hub_name(5), "");
}

TEST(ModelConfigTest, ParsesFieldsAndDefaults) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(TinyConfig(), "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->head_dim, 16);  // hidden_size / num_attention_heads
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_EQ(c->rope_scaling.factor, 0);

  Json qwen = TinyConfig();
  qwen["model_type"] = "qwen2";
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen["tie_word_embeddings"] = true;
  qwen.erase("num_key_value_heads");
  qwen["head_dim"] = 32;
  c = ParseModelConfig(qwen, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 32);
}

TEST(ModelConfigTest, ParsesLlama3RopeScaling) {
  Json config = TinyConfig();
  config["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", 32.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
  absl::StatusOr<ModelConfig> c = ParseModelConfig(config, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_EQ(c->rope_scaling.original_max_position, 8192);
}

TEST(ModelConfigTest, ErrorsNameTheField) {
  Json config = TinyConfig();
  config.erase("hidden_size");
  EXPECT_NE(ErrorOf(config).find("\"hidden_size\" is missing"),
            std::string::npos);

  config = TinyConfig();
  config["num_hidden_layers"] = "2";
  EXPECT_NE(ErrorOf(config).find("\"num_hidden_layers\""), std::string::npos);

  config = TinyConfig();
  config["model_type"] = "gpt2";
  EXPECT_NE(ErrorOf(config).find("\"model_type\""), std::string::npos);

  config = TinyConfig();
  config["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_NE(ErrorOf(config).find("GPT2LMHeadModel"), std::string::npos);

  config = TinyConfig();
  config["num_key_value_heads"] = 3;
  EXPECT_NE(ErrorOf(config).find("\"num_key_value_heads\""), std::string::npos);

  config = TinyConfig();
  config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(ErrorOf(config).find("\"rope_scaling\""), std::string::npos);

  config = TinyConfig();
  config["mlp_bias"] = true;
  EXPECT_NE(ErrorOf(config).find("\"mlp_bias\""), std::string::npos);

  config = TinyConfig();
  config["hidden_act"] = "gelu";
  EXPECT_NE(ErrorOf(config).find("\"hidden_act\""), std::string::npos);

  config = TinyConfig();
  config["rms_norm_eps"] = -1;
  EXPECT_NE(ErrorOf(config).find("\"rms_norm_eps\""), std::string::npos);
}

// Regression: a non-string rope_scaling type used to throw
// nlohmann::json::type_error out of the parser.
TEST(ModelConfigTest, RopeTypeOfTheWrongTypeIsAnError) {
  Json config = TinyConfig();
  config["rope_scaling"] = {{"type", 5}, {"factor", 4.0}};
  EXPECT_NE(ErrorOf(config).find("\"rope_scaling\" has rope_type 5"),
            std::string::npos);
  config["rope_scaling"] = {{"rope_type", nullptr}};
  EXPECT_NE(ErrorOf(config).find("\"rope_scaling\""), std::string::npos);
}

// A value nested deeply enough to overflow the stack of the recursive code
// that reads it (dump() in the error message) is refused by the reader.
TEST(ModelConfigTest, DeeplyNestedConfigIsInvalidNotACrash) {
  testing::TempDir dir;
  const int depth = 200'000;
  std::string text = TinyConfig().dump();
  text.insert(text.size() - 1, ",\"hidden_act\":" + std::string(depth, '[') +
                                   std::string(depth, ']'));
  std::ofstream(dir.path() + "/config.json") << text;
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir.path());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("nests deeper"), std::string::npos)
      << c.status();
}

TEST(ModelConfigTest, LoadsFixtureAndReportsMissingFile) {
  EXPECT_EQ(LoadModelConfig("/nonexistent").status().code(),
            absl::StatusCode::kNotFound);
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  absl::StatusOr<ModelConfig> c = LoadModelConfig(fixture + "/model");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->num_key_value_heads, 2);
}

}  // namespace
}  // namespace lathe::engine
