#include "server/jsonl_validator.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <new>

// Counts the bytes this test binary holds on the heap, and their peak, so
// that a test can bound what validating one line costs.
namespace {
std::atomic<int64_t> g_heap_live{0};
std::atomic<int64_t> g_heap_peak{0};

void* CountedAlloc(size_t n) {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  int64_t live = g_heap_live += static_cast<int64_t>(malloc_usable_size(p));
  int64_t peak = g_heap_peak.load();
  while (live > peak && !g_heap_peak.compare_exchange_weak(peak, live)) {
  }
  return p;
}
void CountedFree(void* p) {
  if (p == nullptr) return;
  g_heap_live -= static_cast<int64_t>(malloc_usable_size(p));
  std::free(p);
}
}  // namespace

void* operator new(size_t n) { return CountedAlloc(n); }
void* operator new[](size_t n) { return CountedAlloc(n); }
void operator delete(void* p) noexcept { CountedFree(p); }
void operator delete[](void* p) noexcept { CountedFree(p); }
void operator delete(void* p, size_t) noexcept { CountedFree(p); }
void operator delete[](void* p, size_t) noexcept { CountedFree(p); }

namespace lathe {
namespace {

constexpr char kGood[] =
    R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]})";

struct Case {
  const char* line;
  const char* expect;  // a substring of the error
};

TEST(JsonlValidatorTest, RefusesBadLinesNamingLineAndField) {
  const Case cases[] = {
      {"{not json", "line 2: not valid JSON"},
      {"\"just a string\"", "line 2: expected a JSON object"},
      {R"({"prompt":"a","completion":"b"})",
       "line 2: mixed formats: this line is prompt_completion but line 1 is "
       "chat"},
      {R"({"text":"just words"})", "line 2: mixed formats"},
      {R"({"input":"a"})", "line 2: input: expected an object"},
      {R"({"output":"a"})", "line 2: messages: missing"},
      {R"({"messages":[]})", "line 2: messages: expected a non-empty array"},
      {R"({"messages":[{"role":"bot","content":"x"}]})",
       "line 2: messages[0].role: unknown role \"bot\""},
      {R"({"messages":[{"role":"user"}]})",
       "line 2: messages[0].content: missing"},
      {R"({"messages":[{"role":"user","content":"q"}]})",
       "line 2: messages: no assistant message"},
      {R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":""}]})",
       "line 2: messages[1].content: empty assistant message"},
      {R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":2}]})",
       "line 2: messages[1].weight: must be 0 or 1"},
      {R"({"messages":[{"role":"user","content":"q","weight":1},{"role":"assistant","content":"a"}]})",
       "line 2: messages[0].weight: only assistant"},
      {"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}",
       "line 2: not valid JSON (or not valid UTF-8)"},
      // JSON's whitespace only: the engine refuses \f and \v too.
      {"\f", "line 2: not valid JSON"},
      {"{\"text\":\"a\"}\v", "line 2: not valid JSON"},
      // A line of two formats would train on one of them: refused.
      {R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"text":"t"})",
       "line 2: ambiguous: holds \"messages\" and \"text\""},
      {R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"prompt":"p"})",
       "line 2: ambiguous: holds \"messages\" and \"prompt\""},
  };
  for (const Case& c : cases) {
    JsonlValidator v;
    std::string data = std::string(kGood) + "\n" + c.line + "\n";
    absl::Status st = v.Feed(data);
    if (st.ok()) st = v.Finish();
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << c.line << " -> " << st;
    EXPECT_NE(st.message().find(c.expect), absl::string_view::npos)
        << "got: " << st.message() << "\nwant: " << c.expect;
  }
}

TEST(JsonlValidatorTest, RecognisesPromptCompletionAndText) {
  JsonlValidator pc;
  ASSERT_TRUE(pc.Feed("{\"prompt\":\"2+2=\",\"completion\":\"4\"}\n"
                      "{\"prompt\":\"\",\"completion\":\"x\"}\n")
                  .ok());
  ASSERT_TRUE(pc.Finish().ok());
  EXPECT_EQ(pc.format(), "prompt_completion");
  JsonlValidator text;
  ASSERT_TRUE(text.Feed("{\"text\":\"Once upon a time\"}\n").ok());
  ASSERT_TRUE(text.Finish().ok());
  EXPECT_EQ(text.format(), "text");
  JsonlValidator bad;
  absl::Status st = bad.Feed("{\"prompt\":\"a\",\"completion\":\"\"}\n");
  EXPECT_NE(st.message().find("line 1: completion: empty"),
            absl::string_view::npos)
      << st;
  JsonlValidator no_completion;
  st = no_completion.Feed("{\"prompt\":\"a\"}\n");
  EXPECT_NE(st.message().find("line 1: completion: missing"),
            absl::string_view::npos)
      << st;
}

TEST(JsonlValidatorTest, AcceptsChunksSplitAnywhere) {
  std::string data;
  for (int i = 0; i < 20; ++i) data += std::string(kGood) + "\n";
  data += "\n   \n";  // blank lines are skipped
  data += kGood;      // no final newline
  for (size_t chunk : {1u, 7u, 64u, 4096u}) {
    JsonlValidator v;
    for (size_t i = 0; i < data.size(); i += chunk) {
      ASSERT_TRUE(v.Feed(absl::string_view(data).substr(i, chunk)).ok());
    }
    ASSERT_TRUE(v.Finish().ok());
    EXPECT_EQ(v.examples(), 21);
  }
}

TEST(JsonlValidatorTest, LimitsAndEmptyFiles) {
  JsonlValidator::Limits limits;
  limits.max_line_bytes = 100;
  JsonlValidator v(limits);
  absl::Status st = v.Feed(std::string(kGood) + "\n" + std::string(200, ' '));
  EXPECT_TRUE(absl::IsResourceExhausted(st)) << st;
  EXPECT_NE(st.message().find("line 2"), absl::string_view::npos);

  JsonlValidator empty;
  ASSERT_TRUE(empty.Feed("\n\n").ok());
  EXPECT_TRUE(absl::IsInvalidArgument(empty.Finish()));
}

// The worst lines for a DOM parser (millions of nodes in 4 MB) cost the
// validator about the line itself: it keeps no value it does not need.
TEST(JsonlValidatorTest, MemoryPerLineIsAboutTheLine) {
  constexpr int64_t kLine = 3'900'000;
  auto wide = [](std::string head) {
    std::string line = head + "[";
    while (static_cast<int64_t>(line.size()) < kLine) line += "1,";
    return line + "1]}";
  };
  auto deep = [](std::string head) {
    const size_t depth = (kLine - head.size()) / 2;
    return head + std::string(depth, '[') + std::string(depth, ']') + "}";
  };
  auto many_messages = [] {
    std::string line = R"({"messages":[)";
    const std::string user = R"({"role":"user","content":""},)";
    while (static_cast<int64_t>(line.size()) < kLine) line += user;
    return line + R"({"role":"assistant","content":"a"}]})";
  };
  const std::string lines[] = {
      wide(R"({"text":"a","x":)"),
      deep(R"({"text":"a","x":)"),
      many_messages(),
      R"({"text":")" + std::string(kLine, 'a') + "\"}",
  };
  for (const std::string& line : lines) {
    const int64_t base = g_heap_live.load();
    g_heap_peak = base;
    {
      JsonlValidator v;
      for (size_t i = 0; i < line.size(); i += 1 << 20) {
        ASSERT_TRUE(v.Feed(absl::string_view(line).substr(i, 1 << 20)).ok());
      }
      ASSERT_TRUE(v.Finish().ok()) << line.substr(0, 40);
    }
    const int64_t used = g_heap_peak.load() - base;
    EXPECT_LT(used, 5 * kLine)
        << line.substr(0, 40) << ": " << used << " bytes for one line";
  }
}

}  // namespace
}  // namespace lathe
