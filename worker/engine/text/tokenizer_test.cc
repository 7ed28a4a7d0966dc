#include "worker/engine/text/tokenizer.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/text/chat_template.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// The fixture's six conversations against Hugging Face's tokenization of
// their rendering (input_ids) and its mask of the final assistant message,
// through tokenizer.json and through tokenizer.model.
class TokenizerFixtureTest : public ::testing::TestWithParam<TokenizerFile> {};

INSTANTIATE_TEST_SUITE_P(BothFiles, TokenizerFixtureTest,
                         ::testing::Values(TokenizerFile::kTokenizerJson,
                                           TokenizerFile::kSentencePiece));

TEST_P(TokenizerFixtureTest, ReproducesHuggingFaceIdsAndAssistantMask) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(fixture + "/model", GetParam());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->eos_id(), 2);
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::Detect(
      (*tokenizer)->chat_template(), (*tokenizer)->eos_token());
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  absl::StatusOr<std::vector<Conversation>> conversations =
      ReadChatJsonl(fixture + "/train.jsonl");
  ASSERT_TRUE(conversations.ok()) << conversations.status();

  std::ifstream expected_file(fixture + "/expected.jsonl");
  std::string line;
  size_t checked = 0;
  for (; std::getline(expected_file, line); ++checked) {
    const Json expected = Json::parse(line);
    ASSERT_LT(checked, conversations->size());
    const std::vector<ChatMessage>& messages =
        (*conversations)[checked].messages;
    EXPECT_EQ(chat_template->Render(messages).text,
              expected["rendered"].get<std::string>());
    absl::StatusOr<TokenizedChat> chat =
        TokenizeChat(**tokenizer, *chat_template, messages);
    ASSERT_TRUE(chat.ok()) << chat.status();
    std::vector<int32_t> ids =
        expected["input_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(chat->ids, ids) << "conversation " << checked;
    std::vector<int> mask;
    const int last = static_cast<int>(messages.size()) - 1;
    for (int m : chat->message) mask.push_back(m == last ? 1 : 0);
    EXPECT_EQ(mask, expected["assistant_mask"].get<std::vector<int>>())
        << "conversation " << checked;
  }
  EXPECT_EQ(checked, 6u);
}

TEST_P(TokenizerFixtureTest, MatchesAddedTokensInsideText) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(fixture + "/model", GetParam());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<Encoding> e = (*tokenizer)->Encode("a</s></s><s>");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_GE(e->ids.size(), 4u);
  EXPECT_EQ(std::vector<int32_t>(e->ids.end() - 3, e->ids.end()),
            (std::vector<int32_t>{2, 2, 1}));
  EXPECT_EQ(e->ranges.back(), (std::pair<size_t, size_t>{9, 12}));
}

Json FixtureConfig(const std::string& fixture) {
  std::ifstream in(fixture + "/model/tokenizer_config.json");
  return Json::parse(in);
}

// Writes into `dir` a model folder's tokenizer: the fixture's `files`
// (tokenizer.model, tokenizer.json) and `config` as tokenizer_config.json.
void WriteTokenizerFolder(const std::string& fixture, const std::string& dir,
                          const std::vector<std::string>& files,
                          const Json& config) {
  for (const std::string& f : files) {
    std::filesystem::copy_file(fixture + "/model/" + f, dir + "/" + f);
  }
  std::ofstream(dir + "/tokenizer_config.json") << config.dump();
}

// A folder with only tokenizer.model whose tokenizer_config.json names its
// special tokens in the older way (no added_tokens_decoder; bos_token as an
// AddedToken object). Hugging Face still matches them in the text, so its
// ids equal those of the fixture's tokenizer.json (an independent
// implementation checked against transformers), and <s> </s> <unk> are 1 2 0.
TEST(TokenizerTest, SentencePieceOnlyFolderMatchesSpecialTokensInText) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  Json config = FixtureConfig(fixture);
  config.erase("added_tokens_decoder");
  // The fixture's tokenizer.json was built in Llama's legacy mode (a "▁"
  // after each special token); transformers encodes a tokenizer.model so
  // unless the config says "legacy": false.
  config.erase("legacy");
  config["bos_token"] = {{"__type", "AddedToken"}, {"content", "<s>"},
                         {"lstrip", false},        {"normalized", false},
                         {"rstrip", false},        {"single_word", false}};
  testing::TempDir dir;
  WriteTokenizerFolder(fixture, dir.path(), {"tokenizer.model"}, config);
  absl::StatusOr<std::unique_ptr<Tokenizer>> spm = Tokenizer::Load(dir.path());
  ASSERT_TRUE(spm.ok()) << spm.status();
  ASSERT_FALSE((*spm)->from_tokenizer_json());
  absl::StatusOr<std::unique_ptr<Tokenizer>> json =
      Tokenizer::Load(fixture + "/model", TokenizerFile::kTokenizerJson);
  ASSERT_TRUE(json.ok()) << json.status();

  absl::StatusOr<Encoding> e = (*spm)->Encode("a</s></s><s><unk>");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->ids,
            (std::vector<int32_t>{(*spm)->TokenToId("\u2581a"), 2, 2, 1, 0}));
  for (const std::string text :
       {"a</s></s><s><unk>", "Hi</s>\n<|user|>\nok <s> x</s>", "</s>"}) {
    absl::StatusOr<Encoding> ours = (*spm)->Encode(text);
    absl::StatusOr<Encoding> reference = (*json)->Encode(text);
    ASSERT_TRUE(ours.ok() && reference.ok());
    EXPECT_EQ(ours->ids, reference->ids) << text;
    EXPECT_EQ(ours->ranges, reference->ranges) << text;
  }

  // A chat template rendering "</s>" after each turn: Hugging Face's ids.
  absl::StatusOr<ChatTemplate> chat_template =
      ChatTemplate::Detect((*spm)->chat_template(), (*spm)->eos_token());
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  absl::StatusOr<std::vector<Conversation>> conversations =
      ReadChatJsonl(fixture + "/train.jsonl");
  ASSERT_TRUE(conversations.ok()) << conversations.status();
  std::ifstream expected_file(fixture + "/expected.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(expected_file, line));
  absl::StatusOr<TokenizedChat> chat =
      TokenizeChat(**spm, *chat_template, (*conversations)[0].messages);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->ids,
            Json::parse(line)["input_ids"].get<std::vector<int32_t>>());
}

// encode(text) with add_special_tokens=True: BOS for TinyLlama, from
// tokenizer_config's add_bos_token / add_eos_token or, when it sets neither,
// tokenizer.json's post_processor.
TEST(TokenizerTest, EncodeWithSpecialTokensAddsWhatTheConfigAsks) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  auto encode = [&](const std::vector<std::string>& files,
                    const Json& config) -> std::vector<int32_t> {
    testing::TempDir dir;
    WriteTokenizerFolder(fixture, dir.path(), files, config);
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(dir.path());
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return {};
    absl::StatusOr<Encoding> e = (*t)->EncodeWithSpecialTokens("Hi");
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? e->ids : std::vector<int32_t>{};
  };
  const Json config = FixtureConfig(fixture);  // add_bos_token: true
  absl::StatusOr<std::unique_ptr<Tokenizer>> plain =
      Tokenizer::Load(fixture + "/model");
  ASSERT_TRUE(plain.ok()) << plain.status();
  absl::StatusOr<Encoding> hi = (*plain)->Encode("Hi");
  ASSERT_TRUE(hi.ok());
  std::vector<int32_t> with_bos = {1};
  with_bos.insert(with_bos.end(), hi->ids.begin(), hi->ids.end());
  std::vector<int32_t> with_eos = hi->ids;
  with_eos.push_back(2);

  for (const char* file : {"tokenizer.json", "tokenizer.model"}) {
    EXPECT_EQ(encode({file}, config), with_bos) << file;
    Json no_bos = config;
    no_bos["add_bos_token"] = false;
    EXPECT_EQ(encode({file}, no_bos), hi->ids) << file;
    Json eos_only = no_bos;
    eos_only["add_eos_token"] = true;
    EXPECT_EQ(encode({file}, eos_only), with_eos) << file;
  }
  // Neither flag: tokenizer.json's TemplateProcessing ("<s>" $A), and
  // LlamaTokenizer's default (BOS) for tokenizer.model.
  Json unset = config;
  unset.erase("add_bos_token");
  unset.erase("add_eos_token");
  EXPECT_EQ(encode({"tokenizer.json"}, unset), with_bos);
  EXPECT_EQ(encode({"tokenizer.model"}, unset), with_bos);

  absl::StatusOr<Encoding> e = (*plain)->EncodeWithSpecialTokens("Hi");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ranges.front(), (std::pair<size_t, size_t>{0, 0}));
}

// transformers saves the template as chat_template.jinja and reads that file
// in preference to tokenizer_config.json's "chat_template".
TEST(TokenizerTest, ReadsChatTemplateJinjaBeforeTheConfigsTemplate) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  Json config = FixtureConfig(fixture);
  const std::string zephyr = config["chat_template"];
  config.erase("chat_template");
  {
    testing::TempDir dir;
    WriteTokenizerFolder(fixture, dir.path(), {"tokenizer.json"}, config);
    std::ofstream(dir.path() + "/chat_template.jinja") << zephyr;
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(dir.path());
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->chat_template(), zephyr);
    absl::StatusOr<ChatTemplate> chat_template = ChatTemplateFor(**t, "");
    ASSERT_TRUE(chat_template.ok()) << chat_template.status();
    EXPECT_EQ(chat_template->family(), ChatTemplate::Family::kZephyr);
  }
  // Both: the file wins over a ChatML template in the config.
  config["chat_template"] =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + "
      "'\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
  testing::TempDir dir;
  WriteTokenizerFolder(fixture, dir.path(), {"tokenizer.model"}, config);
  std::ofstream(dir.path() + "/chat_template.jinja") << zephyr;
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplateFor(**t, "");
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  EXPECT_EQ(chat_template->family(), ChatTemplate::Family::kZephyr);
  // Without the file, the config's template.
  std::filesystem::remove(dir.path() + "/chat_template.jinja");
  t = Tokenizer::Load(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  chat_template = ChatTemplateFor(**t, "");
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  EXPECT_EQ(chat_template->family(), ChatTemplate::Family::kChatMl);
}

TEST(TokenizerTest, MissingTokenizerModelIsNotFound) {
  testing::TempDir dir;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(dir.path());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(tokenizer.status().message().find("tokenizer.model"),
            std::string::npos);
}

}  // namespace
}  // namespace lathe::engine
