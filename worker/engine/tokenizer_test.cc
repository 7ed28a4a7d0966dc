#include "worker/engine/tokenizer.h"

#include <fstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/chat_data.h"
#include "worker/engine/chat_template.h"
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
