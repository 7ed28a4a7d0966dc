#include "worker/engine/data/chat_data.h"

#include <algorithm>
#include <fstream>

#include "gtest/gtest.h"
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
                .find("data.jsonl: line 2: not valid JSON"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"prompt":"x"})").find(": line 1: completion: missing"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":"x"})")
                .find(": line 1: messages: expected a non-empty array"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"text":1})").find(": line 1: text: must be a non-empty string"),
      std::string::npos);
  // One format per file.
  EXPECT_NE(
      ErrorOf(std::string(kGood) + "\n" + R"({"prompt":"p","completion":"c"})")
          .find("data.jsonl: line 2: mixed formats: this line is "
                "prompt_completion but line 1 is chat"),
      std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"bot","content":"x"}]})")
                .find(": line 1: messages[0].role: unknown role \"bot\""),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"user","content":1}]})")
                .find(": line 1: messages[0].content: missing or not a string"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"messages":[{"role":"user","content":"x"}]})")
                .find("no assistant message"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf(R"({"messages":[{"role":"assistant","content":"x","weight":2}]})")
          .find(": line 1: messages[0].weight: must be 0 or 1"),
      std::string::npos);
  // The upload validator's parser (common/data_format.h): a line of two
  // formats is refused, not trained on one of them.
  EXPECT_NE(
      ErrorOf(
          R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"text":"t"})")
          .find("data.jsonl: line 1: ambiguous: holds \"messages\" and \"text\""),
      std::string::npos);
  EXPECT_NE(ErrorOf(std::string(kGood) + "\n\f\n")
                .find("data.jsonl: line 2: not valid JSON"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"prompt":"p","completion":""})")
                .find(": line 1: completion: empty"),
            std::string::npos);
  EXPECT_NE(ErrorOf("\n").find("holds no example"), std::string::npos);
  EXPECT_EQ(ReadChatJsonl("/nonexistent.jsonl").status().code(),
            absl::StatusCode::kNotFound);
}

class ChatDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fixture_ = testing::TinyLlamaFixture();
    if (fixture_.empty()) GTEST_SKIP() << "shared fixtures not found";
    absl::StatusOr<std::unique_ptr<Tokenizer>> t =
        Tokenizer::Load(fixture_ + "/model");
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = *std::move(t);
    absl::StatusOr<ChatTemplate> c = ChatTemplate::Detect(
        tokenizer_->chat_template(), tokenizer_->eos_token());
    ASSERT_TRUE(c.ok()) << c.status();
    chat_template_ = std::make_unique<ChatTemplate>(*c);
  }

  absl::StatusOr<Dataset> Load(const std::string& path, int max_seq_len) {
    return LoadChatDataset(path, *tokenizer_, *chat_template_, max_seq_len);
  }

  std::string fixture_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_template_;
};

// Errors name the file as the caller calls it (a job's file id), never by
// the path it was read from (a worker's folder).
TEST_F(ChatDatasetTest, ErrorsNameTheFileByTheGivenName) {
  testing::TempDir dir;
  const std::string path = WriteFile(
      dir, std::string(kGood) +
               "\n{\"messages\":[{\"role\":\"user\",\"content\":1}]}\n");
  absl::StatusOr<Dataset> d = LoadChatDataset(
      path, *tokenizer_, *chat_template_, 64, "training_file file-abc");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d.status().message().find("training_file file-abc: line 2: "
                                      "messages[0].content"),
            0u)
      << d.status();
  EXPECT_EQ(d.status().message().find(dir.path()), std::string::npos);

  // Also for lines only the tokenizer or the template refuse, and a file
  // with no example.
  const std::string long_path = WriteFile(dir, kGood);
  d = LoadChatDataset(long_path, *tokenizer_, *chat_template_, 2,
                      "validation_file file-xyz");
  EXPECT_EQ(d.status().message().find("validation_file file-xyz: line 1: "), 0u)
      << d.status();
  d = LoadChatDataset(long_path, *tokenizer_,
                      absl::InvalidArgumentError("no template"), 64,
                      "training_file file-abc");
  EXPECT_EQ(d.status().message().find("training_file file-abc: line 1: "), 0u)
      << d.status();
  d = LoadChatDataset(WriteFile(dir, "\n"), *tokenizer_, *chat_template_, 64,
                      "training_file file-abc");
  EXPECT_EQ(d.status().message(), "training_file file-abc holds no example");
}

TEST_F(ChatDatasetTest, MasksAssistantContentAndTruncates) {
  const std::string train = fixture_ + "/train.jsonl";
  absl::StatusOr<Dataset> full = Load(train, 512);
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_EQ(full->examples.size(), 6u);
  EXPECT_EQ(full->truncated, 0);
  const Example& first = full->examples[0];
  // The last masked token is the end-of-turn </s>; the trailing "\n" is not.
  size_t last = first.loss_mask.size();
  while (last > 0 && first.loss_mask[last - 1] == 0) --last;
  ASSERT_GT(last, 0u);
  EXPECT_EQ(first.ids[last - 1], tokenizer_->eos_id());
  EXPECT_LT(last, first.ids.size());
  EXPECT_EQ(first.loss_mask[0], 0);

  // Cutting at 12 tokens keeps only the first prompt: refused, naming it.
  absl::StatusOr<Dataset> cut = Load(train, 12);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(
      cut.status().message().find(
          "train.jsonl: line 1: no token to train on within max_seq_len 12"),
      std::string::npos)
      << cut.status();

  // A length just past every example's first target keeps them all, and
  // truncates the longer ones.
  size_t keep = 0;
  for (const Example& e : full->examples) {
    const size_t f = std::find(e.loss_mask.begin(), e.loss_mask.end(), 1) -
                     e.loss_mask.begin();
    keep = std::max(keep, f + 1);
  }
  int64_t longer = 0;
  for (const Example& e : full->examples) longer += e.ids.size() > keep;
  ASSERT_GT(longer, 0);
  absl::StatusOr<Dataset> some = Load(train, static_cast<int>(keep));
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_EQ(some->truncated, longer);
  for (const Example& e : some->examples) EXPECT_LE(e.ids.size(), keep);
}

TEST_F(ChatDatasetTest, PromptCompletionAndTextAddEos) {
  testing::TempDir dir;
  absl::StatusOr<Dataset> pc =
      Load(WriteFile(dir, R"({"prompt":"Q: 2+2?\nA:","completion":" 4"})"), 64);
  ASSERT_TRUE(pc.ok()) << pc.status();
  ASSERT_EQ(pc->examples.size(), 1u);
  const Example& e = pc->examples[0];
  absl::StatusOr<Encoding> prompt = tokenizer_->Encode("Q: 2+2?\nA:");
  absl::StatusOr<Encoding> whole = tokenizer_->Encode("Q: 2+2?\nA: 4");
  ASSERT_TRUE(prompt.ok() && whole.ok());
  std::vector<int32_t> ids = whole->ids;
  ids.push_back(tokenizer_->eos_id());
  EXPECT_EQ(e.ids, ids);
  // Trained: the completion's tokens and EOS, not the prompt's.
  const size_t n = prompt->ids.size();
  EXPECT_EQ(std::count(e.loss_mask.begin(), e.loss_mask.begin() + n, 1), 0);
  EXPECT_EQ(std::count(e.loss_mask.begin() + n, e.loss_mask.end(), 1),
            static_cast<long>(e.ids.size() - n));

  absl::StatusOr<Dataset> text = Load(
      WriteFile(dir, "{\"text\":\"Hello world\"}\n\n{\"text\":\"b\"}"), 64);
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_EQ(text->examples.size(), 2u);
  const Example& t = text->examples[0];
  EXPECT_EQ(t.ids.back(), tokenizer_->eos_id());
  EXPECT_EQ(t.loss_mask[0], 0);
  EXPECT_EQ(std::count(t.loss_mask.begin(), t.loss_mask.end(), 1),
            static_cast<long>(t.ids.size() - 1));
}

}  // namespace
}  // namespace lathe::engine
