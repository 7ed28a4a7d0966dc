#include "worker/engine/data/preference_data.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

std::string WriteFile(const testing::TempDir& dir, const std::string& text) {
  const std::string path = dir.path() + "/pairs.jsonl";
  std::ofstream(path) << text;
  return path;
}

// A pair with a system prompt, an earlier assistant turn (prompt, never
// trained) and the two replies.
constexpr char kPair[] =
    R"({"input":{"messages":[{"role":"system","content":"Be brief."},)"
    R"({"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},)"
    R"({"role":"user","content":"Capital of France?"}]},)"
    R"("preferred_output":[{"role":"assistant","content":"Paris"}],)"
    R"("non_preferred_output":[{"role":"assistant","content":"Lyon, I think"}]})";

// The fixture's byte-level BPE tokenizer (SmolLM2), whose decoding gives
// back the exact text, or nullptr when the fixtures are absent.
std::unique_ptr<Tokenizer> Smollm2() {
  const std::string dir =
      std::string(LATHE_FIXTURES_DIR) + "/tokenizers/smollm2";
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(dir);
  return t.ok() ? *std::move(t) : nullptr;
}

struct Split {
  std::vector<int32_t> prompt, completion;
};

// A row's ids before and from its first target; the targets are one run.
Split SplitRow(const Example& row) {
  const size_t first =
      std::find(row.loss_mask.begin(), row.loss_mask.end(), 1) -
      row.loss_mask.begin();
  EXPECT_LT(first, row.ids.size());
  for (size_t i = first; i < row.ids.size(); ++i) {
    EXPECT_EQ(row.loss_mask[i], 1) << "a hole in the completion at " << i;
  }
  return {{row.ids.begin(), row.ids.begin() + first},
          {row.ids.begin() + first, row.ids.end()}};
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos;
       at = text.find(what, at + 1)) {
    ++n;
  }
  return n;
}

// METHODS.md §1.2's trap, decided (preference_data.h): for every chat
// template family, a completion is the reply and the end-of-turn token
// exactly once, the row is the prompt rendered with the generation header
// plus that completion and nothing after it, and both rows share the
// prompt.
TEST(PreferenceDataTest, TheEndOfTurnTokenEndsTheCompletionOnceInEveryTemplate) {
  std::unique_ptr<Tokenizer> tokenizer = Smollm2();
  if (tokenizer == nullptr) GTEST_SKIP() << "shared fixtures not found";
  struct Family {
    const char* name;
    const char* eos;
    const char* bos;
    const char* chosen;  // the completion's text, by hand
  };
  const Family families[] = {
      {"chatml", "<|im_end|>", "", "Paris<|im_end|>"},
      {"llama3", "<|eot_id|>", "<|begin_of_text|>", "Paris<|eot_id|>"},
      {"zephyr", "</s>", "", "Paris</s>"},
      {"mistral", "</s>", "<s>", "Paris</s>"},
  };
  testing::TempDir dir;
  const std::string path = WriteFile(dir, kPair);
  for (const Family& f : families) {
    SCOPED_TRACE(f.name);
    absl::StatusOr<ChatTemplate> t =
        ChatTemplate::Named(f.name, "", f.eos, f.bos);
    ASSERT_TRUE(t.ok()) << t.status();
    absl::StatusOr<PreferenceDataset> data =
        LoadPreferenceDataset(path, *tokenizer, *t, 512, 1024);
    ASSERT_TRUE(data.ok()) << data.status();
    ASSERT_EQ(data->pairs.size(), 1u);
    const PreferencePair& pair = data->pairs[0];
    const Split chosen = SplitRow(pair.chosen), rejected = SplitRow(pair.rejected);
    EXPECT_EQ(chosen.prompt, rejected.prompt);
    const std::string completion = tokenizer->Decode(chosen.completion).value();
    EXPECT_EQ(completion, f.chosen);
    EXPECT_EQ(Count(completion, f.eos), 1u);
    EXPECT_EQ(tokenizer->Decode(rejected.completion).value(),
              absl::StrCat("Lyon, I think", f.eos));
    // The prompt is exactly what generation starts from: the rendering
    // with the assistant header, and the earlier answer inside it.
    const std::string prompt = tokenizer->Decode(chosen.prompt).value();
    EXPECT_EQ(prompt,
              t->RenderPrompt({{"system", "Be brief."},
                               {"user", "Hi"},
                               {"assistant", "Hello"},
                               {"user", "Capital of France?"}}));
    EXPECT_NE(prompt.find("Hello"), std::string::npos);
    EXPECT_EQ(data->truncated, 0);
  }
}

TEST(PreferenceDataTest, TruncationKeepsThePromptsEndThenTheRowsStart) {
  PreferencePair pair;
  // Prompt 1..6, completion 7..9.
  pair.chosen = {{1, 2, 3, 4, 5, 6, 7, 8, 9}, {0, 0, 0, 0, 0, 0, 1, 1, 1}};
  pair.rejected = {{1, 2, 3, 4, 5, 6, 17}, {0, 0, 0, 0, 0, 0, 1}};
  EXPECT_TRUE(TruncatePair(pair, /*max_prompt_len=*/4, /*max_seq_len=*/6));
  EXPECT_EQ(pair.chosen.ids, (std::vector<int32_t>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(pair.chosen.loss_mask, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(pair.rejected.ids, (std::vector<int32_t>{3, 4, 5, 6, 17}));
  EXPECT_FALSE(TruncatePair(pair, 4, 6));
}

TEST(PreferenceDataTest, OtherFormatsAreRefusedNamingTheLine) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  std::unique_ptr<Tokenizer> tokenizer =
      Tokenizer::Load(fixture + "/model").value();
  const ChatTemplate t =
      ChatTemplate::Detect(tokenizer->chat_template(), tokenizer->eos_token())
          .value();
  testing::TempDir dir;
  const std::string chat = WriteFile(
      dir,
      R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})");
  absl::StatusOr<PreferenceDataset> d =
      LoadPreferenceDataset(chat, *tokenizer, t, 64, 128, "training_file f1");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(d.status().message(),
                               "training_file f1: line 1: a chat line; "
                               "preference training (dpo, orpo) takes "
                               "preference lines"))
      << d.status();
  // And supervised training refuses preference lines.
  absl::StatusOr<Dataset> sft = LoadChatDataset(WriteFile(dir, kPair),
                                                *tokenizer, t, 64, "f2");
  EXPECT_EQ(sft.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(sft.status().message(),
                                "f2: line 1: a preference line"))
      << sft.status();
  EXPECT_TRUE(
      absl::StrContains(sft.status().message(), "with method dpo or orpo"));
}

TEST(PreferenceDataTest, PairRowsPutTheChosenRowsFirst) {
  std::vector<PreferencePair> pairs(3);
  for (int i = 0; i < 3; ++i) {
    pairs[i].chosen.ids = {i};
    pairs[i].rejected.ids = {10 + i};
  }
  const std::vector<Example> rows = PairRows(pairs, {2, 0});
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0].ids[0], 2);
  EXPECT_EQ(rows[1].ids[0], 0);
  EXPECT_EQ(rows[2].ids[0], 12);
  EXPECT_EQ(rows[3].ids[0], 10);
}

}  // namespace
}  // namespace lathe::engine
