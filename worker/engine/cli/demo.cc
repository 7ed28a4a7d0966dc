#include "worker/engine/cli/demo.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/text/chat_template.h"
#include "worker/engine/text/json_file.h"
#include "worker/engine/text/sentencepiece_model.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

// TinyLlama-1.1B-Chat's chat_template, verbatim.
constexpr char kZephyrTemplate[] =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

constexpr int kTrainConversations = 80;
constexpr int kValidConversations = 16;
constexpr int kVocabSize = 384;

// One question/answer pair of a learnable kind, chosen by `index` and `rng`.
std::vector<ChatMessage> DemoConversation(int index, std::mt19937& rng) {
  static const std::vector<std::pair<std::string, std::string>> kCapitals = {
      {"France", "Paris"},  {"Germany", "Berlin"}, {"Italy", "Rome"},
      {"Spain", "Madrid"},  {"Japan", "Tokyo"},    {"Egypt", "Cairo"},
      {"Canada", "Ottawa"}, {"Peru", "Lima"},      {"Kenya", "Nairobi"},
      {"Norway", "Oslo"},   {"Greece", "Athens"},  {"Chile", "Santiago"}};
  static const std::vector<std::pair<std::string, std::string>> kColours = {
      {"the sky", "blue"},     {"grass", "green"},     {"snow", "white"},
      {"coal", "black"},       {"a banana", "yellow"}, {"a tomato", "red"},
      {"an orange", "orange"}, {"a plum", "purple"}};
  std::vector<ChatMessage> messages;
  if (index % 4 == 0) {
    messages.push_back({"system", "You are a helpful assistant."});
  }
  switch (index % 3) {
    case 0: {
      const auto& [country, capital] = kCapitals[rng() % kCapitals.size()];
      messages.push_back(
          {"user", absl::StrCat("What is the capital of ", country, "?")});
      messages.push_back({"assistant", absl::StrCat("The capital of ", country,
                                                    " is ", capital, ".")});
      break;
    }
    case 1: {
      const auto& [thing, colour] = kColours[rng() % kColours.size()];
      messages.push_back({"user", absl::StrCat("What colour is ", thing, "?")});
      messages.push_back({"assistant", absl::StrCat("The colour of ", thing,
                                                    " is ", colour, ".")});
      break;
    }
    default: {
      const int a = 1 + static_cast<int>(rng() % 9),
                b = 1 + static_cast<int>(rng() % 9);
      messages.push_back(
          {"user", absl::StrCat("What is ", a, " plus ", b, "?")});
      messages.push_back(
          {"assistant", absl::StrCat(a, " plus ", b, " is ", a + b, ".")});
      break;
    }
  }
  return messages;
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out)
    return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

std::string JsonlLine(const std::vector<ChatMessage>& messages) {
  Json list = Json::array();
  for (const ChatMessage& m : messages) {
    list.push_back({{"role", m.role}, {"content", m.content}});
  }
  return Json{{"messages", list}}.dump() + "\n";
}

// Trains the tokenizer on the rendered conversations, line by line.
absl::StatusOr<std::string> TrainTokenizer(
    const std::vector<std::vector<ChatMessage>>& conversations) {
  absl::StatusOr<ChatTemplate> chat_template =
      ChatTemplate::Detect(kZephyrTemplate, "</s>");
  RETURN_IF_ERROR(chat_template.status());
  std::vector<std::string> sentences;
  for (const auto& messages : conversations) {
    for (absl::string_view line :
         absl::StrSplit(chat_template->Render(messages).text, '\n')) {
      if (!line.empty()) sentences.emplace_back(line);
    }
  }
  std::string error;
  std::string model = TrainSentencePieceBpe(sentences, kVocabSize, &error);
  if (model.empty()) {
    return absl::InternalError(
        absl::StrCat("SentencePiece training failed: ", error));
  }
  return model;
}

Json ModelConfigJson(int vocab_size, const DemoModelSize& size) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", size.hidden_size},
          {"intermediate_size", size.intermediate_size},
          {"num_hidden_layers", size.num_hidden_layers},
          {"num_attention_heads", size.num_attention_heads},
          {"num_key_value_heads", size.num_key_value_heads},
          {"head_dim", size.hidden_size / size.num_attention_heads},
          {"hidden_act", "silu"},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"max_position_embeddings", 512},
          {"vocab_size", vocab_size},
          {"tie_word_embeddings", false},
          {"attention_bias", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"torch_dtype", "float32"}};
}

Json TokenizerConfigJson() {
  Json added = Json::object();
  const char* specials[] = {"<unk>", "<s>", "</s>"};
  for (int id = 0; id < 3; ++id) {
    added[std::to_string(id)] = {{"content", specials[id]}, {"lstrip", false},
                                 {"normalized", false},     {"rstrip", false},
                                 {"single_word", false},    {"special", true}};
  }
  return {{"add_bos_token", true},
          {"add_eos_token", false},
          {"added_tokens_decoder", added},
          {"bos_token", "<s>"},
          {"eos_token", "</s>"},
          {"unk_token", "<unk>"},
          {"pad_token", "</s>"},
          {"legacy", false},
          {"model_max_length", 512},
          {"tokenizer_class", "LlamaTokenizer"},
          {"chat_template", kZephyrTemplate}};
}

// Random weights under Hugging Face Llama names: projections and the head
// N(0, 1/fan_in), embeddings N(0, 1), norms 1. (The usual N(0, 0.02) leaves
// a model this small unable to put much weight on any token, so the demo
// could barely learn.)
absl::Status WriteRandomWeights(const fs::path& path, const Json& config) {
  const int64_t C = config["hidden_size"], I = config["intermediate_size"];
  const int64_t V = config["vocab_size"], D = config["head_dim"];
  const int64_t q = D * config["num_attention_heads"].get<int64_t>();
  const int64_t kv = D * config["num_key_value_heads"].get<int64_t>();
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {V, C}},
      {"model.norm.weight", {C}},
      {"lm_head.weight", {V, C}}};
  for (int i = 0; i < config["num_hidden_layers"].get<int>(); ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    for (auto [name, shape] :
         std::vector<std::pair<std::string, std::vector<int64_t>>>{
             {"input_layernorm.weight", {C}},
             {"post_attention_layernorm.weight", {C}},
             {"self_attn.q_proj.weight", {q, C}},
             {"self_attn.k_proj.weight", {kv, C}},
             {"self_attn.v_proj.weight", {kv, C}},
             {"self_attn.o_proj.weight", {C, q}},
             {"mlp.gate_proj.weight", {I, C}},
             {"mlp.up_proj.weight", {I, C}},
             {"mlp.down_proj.weight", {C, I}}}) {
      shapes.emplace_back(p + name, shape);
    }
  }
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> data;
  std::vector<safetensors::TensorView> views;
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float>& values = data.emplace_back(n);
    const bool norm = shape.size() == 1;
    const float scale =
        name == "model.embed_tokens.weight"
            ? 1.0f
            : 1.0f / std::sqrt(static_cast<float>(shape.back()));
    for (float& v : values) v = norm ? 1.0f : scale * normal(rng);
    views.push_back({name, safetensors::Dtype::kF32, shape,
                     absl::Span<const std::byte>(
                         reinterpret_cast<const std::byte*>(values.data()),
                         values.size() * sizeof(float))});
  }
  return safetensors::WriteFile(path.string(), views, {{"format", "pt"}});
}

}  // namespace

absl::Status MakeDemo(const std::string& out_dir) {
  const fs::path root = fs::absolute(out_dir);
  const fs::path model_dir = root / "model";
  std::error_code error;
  fs::create_directories(model_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat(
        "cannot create ", model_dir.string(), ": ", error.message()));
  }
  std::mt19937 rng(7);
  std::vector<std::vector<ChatMessage>> conversations;
  std::string train, valid;
  for (int i = 0; i < kTrainConversations + kValidConversations; ++i) {
    conversations.push_back(DemoConversation(i, rng));
    absl::StrAppend(i < kTrainConversations ? &train : &valid,
                    JsonlLine(conversations.back()));
  }
  RETURN_IF_ERROR(WriteText(root / "train.jsonl", train));
  RETURN_IF_ERROR(WriteText(root / "valid.jsonl", valid));

  ASSIGN_OR_RETURN(std::string tokenizer, TrainTokenizer(conversations));
  RETURN_IF_ERROR(WriteText(model_dir / "tokenizer.model", tokenizer));
  std::string load_error;
  auto spm = SentencePieceModel::Load((model_dir / "tokenizer.model").string(),
                                      &load_error);
  if (spm == nullptr) return absl::InternalError(load_error);

  const Json config = ModelConfigJson(spm->vocab_size(), DemoModelSize{});
  RETURN_IF_ERROR(WriteJsonFile((model_dir / "config.json").string(), config));
  RETURN_IF_ERROR(WriteJsonFile((model_dir / "tokenizer_config.json").string(),
                                TokenizerConfigJson()));
  RETURN_IF_ERROR(WriteRandomWeights(model_dir / "model.safetensors", config));

  RunSpec spec;
  spec.model.dir = model_dir.string();
  spec.model.base_model_name = "lathe-demo-tiny-llama";
  spec.data.training_file = (root / "train.jsonl").string();
  spec.data.validation_file = (root / "valid.jsonl").string();
  spec.data.max_seq_len = 256;
  spec.output.dir = (root / "adapter").string();
  spec.optimizer.learning_rate = 2e-3;
  // The MLP projections too: the random base model needs them to learn fast.
  spec.adapter = LoraSpec{.target_modules = {"q_proj", "k_proj", "v_proj",
                                             "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}};
  return WriteJsonFile((root / "spec.json").string(), RunSpecJson(spec));
}

absl::Status ResizeDemoModel(const std::string& out_dir,
                             const DemoModelSize& size) {
  const fs::path model_dir = fs::absolute(out_dir) / "model";
  ASSIGN_OR_RETURN(Json old,
                   ReadJsonFile((model_dir / "config.json").string()));
  const Json config = ModelConfigJson(
      size.vocab_size > 0 ? size.vocab_size : old["vocab_size"].get<int>(),
      size);
  RETURN_IF_ERROR(WriteJsonFile((model_dir / "config.json").string(), config));
  return WriteRandomWeights(model_dir / "model.safetensors", config);
}

}  // namespace lathe::engine
