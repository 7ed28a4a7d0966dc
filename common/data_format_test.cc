#include "common/data_format.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lathe {
namespace {

// The error of parsing `line`, expecting INVALID_ARGUMENT (and the same
// from CheckDataLine).
std::string ErrorOf(const std::string& line) {
  absl::StatusOr<DataExample> e = ParseDataLine(line);
  EXPECT_TRUE(absl::IsInvalidArgument(e.status()))
      << line << " -> " << e.status();
  EXPECT_EQ(CheckDataLine(line).status(), e.status()) << line;
  return std::string(e.status().message());
}

TEST(DataFormatTest, ParsesTheThreeFormats) {
  auto chat = ParseDataLine(
      R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},)"
      R"({"role":"assistant","content":"","weight":0},{"role":"assistant","content":"a"}]})");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->format, DataFormat::kChat);
  ASSERT_EQ(chat->messages.size(), 4u);
  EXPECT_EQ(chat->messages[0].role, Role::kSystem);
  EXPECT_EQ(chat->messages[1].content, "q");
  EXPECT_FALSE(chat->messages[2].train);
  EXPECT_TRUE(chat->messages[3].train);
  EXPECT_EQ(chat->messages[3].role, Role::kAssistant);

  auto pc = ParseDataLine(R"( {"prompt":"","completion":"4"} )");
  ASSERT_TRUE(pc.ok()) << pc.status();
  EXPECT_EQ(pc->format, DataFormat::kPromptCompletion);
  EXPECT_EQ(pc->completion, "4");

  auto text = ParseDataLine("{\"text\":\"once\"}\r");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->format, DataFormat::kText);
  EXPECT_EQ(text->text, "once");
}

TEST(DataFormatTest, WhitespaceIsJsonsOnly) {
  EXPECT_TRUE(IsBlankDataLine(""));
  EXPECT_TRUE(IsBlankDataLine(" \t\r\n"));
  EXPECT_FALSE(IsBlankDataLine("\f"));
  EXPECT_FALSE(IsBlankDataLine(" \v "));
  EXPECT_NE(ErrorOf("\f").find("not valid JSON"), std::string::npos);
  EXPECT_NE(ErrorOf("{\"text\":\"a\"}\v").find("not valid JSON"),
            std::string::npos);
  EXPECT_NE(ErrorOf("\v{\"text\":\"a\"}").find("not valid JSON"),
            std::string::npos);
}

TEST(DataFormatTest, AmbiguousLinesAreRefused) {
  EXPECT_EQ(
      ErrorOf(
          R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"text":"t"})"),
      "ambiguous: holds \"messages\" and \"text\" (a line is chat, "
      "prompt/completion, text or preference, not two of them)");
  EXPECT_TRUE(absl::StrContains(
      ErrorOf(
          R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"preferred_output":[]})"),
      "ambiguous: holds \"messages\" and \"preferred_output\""));
  EXPECT_TRUE(absl::StrContains(
      ErrorOf(
          R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"prompt":"p"})"),
      "ambiguous: holds \"messages\" and \"prompt\""));
  EXPECT_TRUE(
      absl::StrContains(ErrorOf(R"({"completion":"c","text":"t"})"),
                        "ambiguous: holds \"completion\" and \"text\""));
  EXPECT_EQ(ErrorOf(R"({"text":"a","text":"b"})"), "text: given twice");
  EXPECT_EQ(
      ErrorOf(
          R"({"messages":[{"role":"user","role":"assistant","content":"a"}]})"),
      "messages[0].role: given twice");
}

TEST(DataFormatTest, OtherKeysAreSkipped) {
  auto e = ParseDataLine(
      R"({"id":7,"meta":{"a":[1,{"text":"no"}],"messages":null},"text":"yes",)"
      R"("x":[[[[]]]]})");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->text, "yes");
  auto chat = ParseDataLine(
      R"({"messages":[{"name":"bob","role":"user","content":"q","extra":{"role":1}},)"
      R"({"role":"assistant","content":"a"}]})");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->messages.size(), 2u);
}

TEST(DataFormatTest, BadLinesNameTheField) {
  struct Case {
    const char* line;
    const char* error;
  };
  const Case cases[] = {
      {"{oops", "not valid JSON (or not valid UTF-8) near byte 2"},
      {"[1,2]", "expected a JSON object"},
      {"{\"text\":\"\xc3\x28\"}", "not valid JSON (or not valid UTF-8)"},
      {R"({"input":"a"})", "input: expected an object"},
      {R"({"id":"a"})", "messages: missing"},
      {R"({"messages":"hi"})", "messages: expected a non-empty array"},
      {R"({"messages":[]})", "messages: expected a non-empty array"},
      {R"({"messages":[3]})", "messages[0]: expected an object"},
      {R"({"messages":[{"role":"bot","content":"x"}]})",
       "messages[0].role: unknown role \"bot\" (expected system, user or "
       "assistant)"},
      {R"({"messages":[{"role":"user"}]})",
       "messages[0].content: missing or not a string"},
      {R"({"messages":[{"content":"x"}]})",
       "messages[0].role: missing or not a string"},
      {R"({"messages":[{"role":"user","content":"q"}]})",
       "messages: no assistant message with weight 1"},
      {R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":""}]})",
       "messages[1].content: empty assistant message"},
      {R"({"messages":[{"role":"assistant","content":"a","weight":1.0}]})",
       "messages[0].weight: must be 0 or 1"},
      {R"({"messages":[{"role":"user","content":"q","weight":1},{"role":"assistant","content":"a"}]})",
       "messages[0].weight: only assistant messages take a weight"},
      {R"({"prompt":"a"})", "completion: missing or not a string"},
      {R"({"completion":"a"})", "prompt: missing or not a string"},
      {R"({"prompt":"a","completion":""})", "completion: empty"},
      {R"({"prompt":1,"completion":"a"})", "prompt: missing or not a string"},
      {R"({"text":""})", "text: must be a non-empty string"},
      {R"({"text":["a"]})", "text: must be a non-empty string"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(absl::StartsWith(ErrorOf(c.line), c.error))
        << c.line << "\n got: " << ErrorOf(c.line) << "\nwant: " << c.error;
  }
}

// OpenAI's DPO line: the prompt in input.messages, one assistant message
// in each output.
constexpr char kPreferenceLine[] =
    R"({"input":{"messages":[{"role":"system","content":"s"},)"
    R"({"role":"user","content":"q"}],"tools":[{"type":"function"}],)"
    R"("parallel_tool_calls":false},)"
    R"("preferred_output":[{"role":"assistant","content":"good"}],)"
    R"("non_preferred_output":[{"role":"assistant","content":"bad"}]})";

TEST(DataFormatTest, ParsesPreferenceLines) {
  auto e = ParseDataLine(kPreferenceLine);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->format, DataFormat::kPreference);
  EXPECT_STREQ(DataFormatName(e->format), "preference");
  ASSERT_EQ(e->messages.size(), 2u);
  EXPECT_EQ(e->messages[0].role, Role::kSystem);
  EXPECT_EQ(e->messages[1].content, "q");
  ASSERT_EQ(e->preferred.size(), 1u);
  EXPECT_EQ(e->preferred[0].content, "good");
  EXPECT_EQ(e->preferred[0].role, Role::kAssistant);
  ASSERT_EQ(e->non_preferred.size(), 1u);
  EXPECT_EQ(e->non_preferred[0].content, "bad");
  EXPECT_EQ(CheckDataLine(kPreferenceLine).value(), DataFormat::kPreference);
  // A multi-turn prompt (earlier assistant turns) is a prompt like any.
  auto multi = ParseDataLine(
      R"({"input":{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},)"
      R"({"role":"user","content":"c"}]},"preferred_output":[{"role":"assistant","content":"d"}],)"
      R"("non_preferred_output":[{"role":"assistant","content":"e"}]})");
  ASSERT_TRUE(multi.ok()) << multi.status();
  EXPECT_EQ(multi->messages.size(), 3u);
}

TEST(DataFormatTest, BadPreferenceLinesNameTheField) {
  const std::string good_outputs =
      R"("preferred_output":[{"role":"assistant","content":"g"}],)"
      R"("non_preferred_output":[{"role":"assistant","content":"b"}])";
  struct Case {
    std::string line;
    const char* error;
  };
  const Case cases[] = {
      {absl::StrCat("{", good_outputs, "}"), "input: missing"},
      {absl::StrCat(R"({"input":{"tools":[]},)", good_outputs, "}"),
       "input.messages: expected a non-empty array"},
      {absl::StrCat(R"({"input":{"messages":{}},)", good_outputs, "}"),
       "input.messages: expected a non-empty array"},
      {absl::StrCat(R"({"input":{"messages":[{"role":"user","content":"q"}],)"
                    R"("messages":[]},)",
                    good_outputs, "}"),
       "input.messages: given twice"},
      {absl::StrCat(
           R"({"input":{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]},)",
           good_outputs, "}"),
       "input.messages[1]: the prompt ends with an assistant message"},
      {absl::StrCat(
           R"({"input":{"messages":[{"role":"robot","content":"q"}]},)",
           good_outputs, "}"),
       "input.messages[0].role: unknown role \"robot\""},
      {absl::StrCat(
           R"({"input":{"messages":[{"role":"user","content":"q","weight":1}]},)",
           good_outputs, "}"),
       "input.messages[0].weight: not used in preference lines"},
      {R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
       R"("non_preferred_output":[{"role":"assistant","content":"b"}]})",
       "preferred_output: expected exactly one assistant message"},
      {R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
       R"("preferred_output":[],"non_preferred_output":[{"role":"assistant","content":"b"}]})",
       "preferred_output: expected exactly one assistant message"},
      {R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
       R"("preferred_output":{"role":"assistant","content":"g"},)"
       R"("non_preferred_output":[{"role":"assistant","content":"b"}]})",
       "preferred_output: expected an array of one assistant message"},
      {R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
       R"("preferred_output":[{"role":"assistant","content":"g"},{"role":"assistant","content":"h"}],)"
       R"("non_preferred_output":[{"role":"assistant","content":"b"}]})",
       "preferred_output: expected exactly one assistant message"},
      {R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
       R"("preferred_output":[{"role":"assistant","content":"g"}],)"
       R"("non_preferred_output":[{"role":"user","content":"b"}]})",
       "non_preferred_output[0].role: must be \"assistant\", not \"user\""},
      {R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
       R"("preferred_output":[{"role":"assistant","content":""}],)"
       R"("non_preferred_output":[{"role":"assistant","content":"b"}]})",
       "preferred_output[0].content: empty assistant message"},
      {R"({"input":{"messages":[{"role":"user","content":"q"}]},)"
       R"("preferred_output":[{"role":"assistant","content":"g"}]})",
       "non_preferred_output: expected exactly one assistant message"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(absl::StartsWith(ErrorOf(c.line), c.error))
        << c.line << "\n got: " << ErrorOf(c.line) << "\nwant: " << c.error;
  }
}

TEST(DataFormatTest, AnUnknownRoleIsQuotedShortAndEscaped) {
  const std::string error =
      ErrorOf(absl::StrCat(R"({"messages":[{"role":")", "\\u001b[31m",
                           std::string(100, 'r'), R"(","content":"x"}]})"));
  EXPECT_TRUE(
      absl::StartsWith(error, "messages[0].role: unknown role \"\\x1b[31mrrr"))
      << error;
  EXPECT_TRUE(absl::StrContains(error, "rrr\"... (expected")) << error;
  EXPECT_FALSE(absl::StrContains(error, std::string(60, 'r'))) << error;
}

TEST(DataFormatTest, OneFormatPerFile) {
  DataFileFormat file;
  EXPECT_TRUE(file.empty());
  ASSERT_TRUE(file.Add(DataFormat::kChat, 2).ok());
  ASSERT_TRUE(file.Add(DataFormat::kChat, 3).ok());
  EXPECT_EQ(file.format(), DataFormat::kChat);
  EXPECT_EQ(file.Add(DataFormat::kText, 4).message(),
            "mixed formats: this line is text but line 2 is chat (one format "
            "per file)");
}

}  // namespace
}  // namespace lathe
