#include "worker/engine/chat_data.h"

#include <fstream>

#include "gtest/gtest.h"
#include "worker/engine/demo.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

std::string WriteFile(const testing::TempDir& dir, const std::string& text) {
  const std::string path = dir.path() + "/data.jsonl";
  std::ofstream(path) << text;
  return path;
}

// The error of reading `text` as chat JSONL, expecting INVALID_ARGUMENT.
std::string ErrorOf(const std::string& text) {
  testing::TempDir dir;
  absl::StatusOr<std::vector<Conversation>> c =
      ReadChatJsonl(WriteFile(dir, text));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
  return std::string(c.status().message());
}

constexpr char kGood[] =
    R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]})";

TEST(ReadChatJsonlTest, ReadsMessagesAndSkipsBlankLines) {
  testing::TempDir dir;
  absl::StatusOr<std::vector<Conversation>> c = ReadChatJsonl(WriteFile(
      dir,
      std::string(kGood) + "\n\n" +
          R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},)"
          R"({"role":"assistant","content":"a","weight":0},{"role":"user","content":"q2"},)"
          R"({"role":"assistant","content":"b"}]})"
          "\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->size(), 2u);
  EXPECT_EQ((*c)[1].line, 3);
  EXPECT_EQ((*c)[1].messages.size(), 5u);
  EXPECT_FALSE((*c)[1].messages[2].train);
  EXPECT_TRUE((*c)[1].messages[4].train);
}

TEST(ReadChatJsonlTest, ErrorsNameTheLine) {
  EXPECT_NE(ErrorOf(std::string(kGood) + "\n{oops\n")
                .find("data.jsonl:2: not a JSON object"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"prompt":"x"})").find(":1: field \"messages\""),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"bot","content":"x"}]})")
                .find("messages[0]: field \"role\""),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"user","content":1}]})")
                .find("field \"content\""),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"user","content":"x"}]})")
                .find("no assistant message"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"messages":[{"role":"assistant","content":"x","weight":2}]})")
          .find("field \"weight\""),
      std::string::npos);
  EXPECT_NE(ErrorOf("\n").find("holds no conversation"), std::string::npos);
  EXPECT_EQ(ReadChatJsonl("/nonexistent.jsonl").status().code(),
            absl::StatusCode::kNotFound);
}

class ChatDatasetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  static testing::TempDir* demo_;
};
testing::TempDir* ChatDatasetTest::demo_ = nullptr;

TEST_F(ChatDatasetTest, MasksAssistantContentAndTruncates) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(demo_->path() + "/model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::Detect(
      (*tokenizer)->chat_template(), (*tokenizer)->eos_token());
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();

  const std::string train = demo_->path() + "/train.jsonl";
  absl::StatusOr<Dataset> full =
      LoadChatDataset(train, **tokenizer, *chat_template, 512);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->examples.size(), 80u);
  EXPECT_EQ(full->truncated, 0);
  const Example& first = full->examples[0];
  // The last masked token is the end-of-turn </s>; the trailing "\n" is not.
  size_t last = first.loss_mask.size();
  while (last > 0 && first.loss_mask[last - 1] == 0) --last;
  ASSERT_GT(last, 0u);
  EXPECT_EQ(first.ids[last - 1], (*tokenizer)->eos_id());
  EXPECT_LT(last, first.ids.size());
  EXPECT_EQ(first.loss_mask[0], 0);

  // Cutting at 12 tokens keeps only the prompt: every example is dropped.
  absl::StatusOr<Dataset> cut =
      LoadChatDataset(train, **tokenizer, *chat_template, 12);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument);

  // A length that cuts into the answers keeps examples, truncated.
  const size_t shortest_full = first.ids.size() - 3;
  absl::StatusOr<Dataset> some = LoadChatDataset(
      train, **tokenizer, *chat_template, static_cast<int>(shortest_full));
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_GT(some->truncated, 0);
  for (const Example& e : some->examples)
    EXPECT_LE(e.ids.size(), shortest_full);
}

}  // namespace
}  // namespace lathe::engine
