#include "worker/engine/text/tokenizer_json.h"

#include <fstream>
#include <functional>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/test_util.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

std::string SmolLm2Dir() {
  const std::string dir =
      std::string(LATHE_FIXTURES_DIR) + "/tokenizers/smollm2";
  return std::ifstream(dir + "/tokenizer.json").good() ? dir : "";
}

// Writes tokenizer.json and a tokenizer_config.json (eos "<eos>") to `dir`
// and loads them.
std::unique_ptr<Tokenizer> LoadTiny(const testing::TempDir& dir,
                                    const Json& tokenizer_json) {
  std::ofstream(dir.path() + "/tokenizer.json") << tokenizer_json.dump();
  std::ofstream(dir.path() + "/tokenizer_config.json")
      << Json{{"eos_token", "<eos>"}}.dump();
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(dir.path());
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

// A byte-level BPE whose first 256 ids are the bytes (id == byte value),
// then "ab" 256, "abc" 257, "bc" 258, "12" 259, "Ġa" 260, and the added
// tokens <eos> 300, <x> 301 (lstrip+rstrip), <y> 302, <w> 303 (single_word).
Json ByteLevelJson() {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteLevelChar(b)] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab["bc"] = 258;
  vocab["12"] = 259;
  vocab
      ["\xC4\xA0"
       "a"] = 260;  // "Ġa"
  auto added = [](int id, const std::string& content, bool lstrip, bool rstrip,
                  bool single_word) {
    return Json{
        {"id", id},         {"content", content},         {"lstrip", lstrip},
        {"rstrip", rstrip}, {"single_word", single_word}, {"normalized", false},
        {"special", true}};
  };
  return Json{
      {"version", "1.0"},
      {"added_tokens",
       {added(300, "<eos>", false, false, false),
        added(301, "<x>", true, true, false),
        added(302, "<y>", false, false, false),
        added(303, "<w>", false, false, true)}},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Digits"}, {"individual_digits", true}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"use_regex", true}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        // "b c" outranks "a b"; merges in both spellings.
        {"merges", {"b c", Json{"a", "b"}, "ab c", "1 2", "\xC4\xA0 a"}}}}};
}

std::vector<int32_t> Ids(const Tokenizer& t, const std::string& text) {
  absl::StatusOr<Encoding> e = t.Encode(text);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? e->ids : std::vector<int32_t>{};
}

TEST(ByteLevelBpeTest, MergesByRankThenLeftmost) {
  testing::TempDir dir;
  auto t = LoadTiny(dir, ByteLevelJson());
  ASSERT_NE(t, nullptr);
  // "b c" (rank 0) beats "a b" (rank 1), and ("a", "bc") is no merge.
  EXPECT_EQ(Ids(*t, "abc"), (std::vector<int32_t>{'a', 258}));
  EXPECT_EQ(Ids(*t, "ab"), (std::vector<int32_t>{256}));
  // " a" is one pre-token: "Ġ" + "a" merge.
  EXPECT_EQ(Ids(*t, "b a"), (std::vector<int32_t>{'b', 260}));
  EXPECT_EQ(*t->Decode(Ids(*t, "b abc")), "b abc");
}

TEST(ByteLevelBpeTest, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  testing::TempDir dir;
  Json json = ByteLevelJson();
  json["model"]["ignore_merges"] = true;
  auto t = LoadTiny(dir, json);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Ids(*t, "abc"), (std::vector<int32_t>{257}));
  EXPECT_EQ(Ids(*t, "abca"), (std::vector<int32_t>{'a', 258, 'a'}));
}

TEST(ByteLevelBpeTest, DigitsAreSplitOneByOne) {
  testing::TempDir dir;
  auto t = LoadTiny(dir, ByteLevelJson());
  ASSERT_NE(t, nullptr);
  // "1 2" is a merge, but each digit is its own pre-token.
  EXPECT_EQ(Ids(*t, "a12"), (std::vector<int32_t>{'a', '1', '2'}));
  Json json = ByteLevelJson();
  json["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = false;
  testing::TempDir dir2;
  auto grouped = LoadTiny(dir2, json);
  ASSERT_NE(grouped, nullptr);
  EXPECT_EQ(Ids(*grouped, "a12"), (std::vector<int32_t>{'a', 259}));
}

TEST(ByteLevelBpeTest, NfcComposesBeforeSplittingIntoBytes) {
  testing::TempDir dir;
  auto t = LoadTiny(dir, ByteLevelJson());
  ASSERT_NE(t, nullptr);
  // "e" + U+0301 COMBINING ACUTE becomes U+00E9 (C3 A9) under NFC.
  absl::StatusOr<Encoding> e = t->Encode("e\xCC\x81");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->ids, (std::vector<int32_t>{0xC3, 0xA9}));
  // Both bytes come from the three input bytes.
  EXPECT_EQ(e->ranges[0], (std::pair<size_t, size_t>{0, 3}));
  EXPECT_EQ(e->ranges[1], (std::pair<size_t, size_t>{0, 3}));
  Json json = ByteLevelJson();
  json["normalizer"] = nullptr;
  testing::TempDir dir2;
  auto raw = LoadTiny(dir2, json);
  ASSERT_NE(raw, nullptr);
  EXPECT_EQ(Ids(*raw, "e\xCC\x81"), (std::vector<int32_t>{'e', 0xCC, 0x81}));
}

TEST(ByteLevelBpeTest, AddedTokensHonourStripAndSingleWord) {
  testing::TempDir dir;
  auto t = LoadTiny(dir, ByteLevelJson());
  ASSERT_NE(t, nullptr);
  const int32_t g = t->TokenToId("\xC4\xA0");  // "Ġ", byte 0x20
  ASSERT_EQ(g, 0x20);
  // <x> takes the spaces on both sides.
  absl::StatusOr<Encoding> x = t->Encode("b <x>  b");
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_EQ(x->ids, (std::vector<int32_t>{'b', 301, 'b'}));
  EXPECT_EQ(x->ranges[1], (std::pair<size_t, size_t>{1, 7}));
  // <y> takes none: the spaces go to the model.
  EXPECT_EQ(Ids(*t, "b <y> b"), (std::vector<int32_t>{'b', g, 302, g, 'b'}));
  // <w> only stands alone.
  EXPECT_EQ(Ids(*t, "b<w>"), (std::vector<int32_t>{'b', '<', 'w', '>'}));
  EXPECT_EQ(Ids(*t, "<w> b"), (std::vector<int32_t>{303, g, 'b'}));
  EXPECT_EQ(*t->Decode({'b', 301, 'b', 300}), "b<x>b<eos>");
  EXPECT_EQ(t->eos_id(), 300);
}

// A SentencePiece-style BPE: Metaspace "▁" with prepend_scheme "first",
// byte fallback, and Llama 2's decoder chain.
TEST(MetaspaceBpeTest, PrependsOnceAndFallsBackToBytes) {
  const std::string m = "\xE2\x96\x81";  // ▁
  Json json = {
      {"added_tokens",
       Json::array({Json{{"id", 7}, {"content", "<eos>"}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Metaspace"},
        {"replacement", m},
        {"prepend_scheme", "first"},
        {"split", false}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         Json::array({Json{{"type", "Replace"},
                           {"pattern", {{"String", m}}},
                           {"content", " "}},
                      Json{{"type", "ByteFallback"}}, Json{{"type", "Fuse"}},
                      Json{{"type", "Strip"},
                           {"content", " "},
                           {"start", 1},
                           {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"vocab",
         {{"<unk>", 0},
          {"<0x0A>", 1},
          {m, 2},
          {"h", 3},
          {"i", 4},
          {m + "h", 5},
          {m + "hi", 6}}},
        {"merges",
         Json::array({Json::array({m, "h"}), Json::array({m + "h", "i"})})}}}};
  testing::TempDir dir;
  auto t = LoadTiny(dir, json);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Ids(*t, "hi\n"), (std::vector<int32_t>{6, 1}));
  EXPECT_EQ(Ids(*t, "hi hi"), (std::vector<int32_t>{6, 6}));
  // Only the segment at the start of the input gets the "▁".
  EXPECT_EQ(Ids(*t, "hi<eos>hi"), (std::vector<int32_t>{6, 7, 3, 4}));
  // "x" has neither a piece nor byte token 0x78: unknown.
  EXPECT_EQ(Ids(*t, "x"), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(*t->Decode({6, 1, 6}), "hi\n hi");
}

// Llama 3's pre_tokenizer: its Split regex (digits in threes, case-blind
// contractions), then ByteLevel without a regex.
TEST(PreTokenizerTest, Llama3SplitRegex) {
  const Json json = {
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array(
           {Json{
                {"type", "Split"},
                {"pattern",
                 {{"Regex",
                   R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"}}},
                {"behavior", "Isolated"},
                {"invert", false}},
            Json{{"type", "ByteLevel"},
                 {"add_prefix_space", false},
                 {"trim_offsets", true},
                 {"use_regex", false}}})}};
  absl::StatusOr<PreTokenizer> pre = PreTokenizer::FromJson(json);
  ASSERT_TRUE(pre.ok()) << pre.status();
  EXPECT_TRUE(pre->byte_level());
  std::vector<std::string> pieces;
  for (const AlignedText& p :
       pre->Apply(AlignedText::Of("Hello world 12345 IT'S\n\n  x", 0), true)) {
    pieces.push_back(p.text);
  }
  EXPECT_EQ(pieces,
            (std::vector<std::string>{"Hello", " world", " ", "123", "45",
                                      " IT", "'S", "\n\n", " ", " x"}));
}

TEST(TokenizerJsonTest, UnsupportedPartsAreNamed) {
  Json json = ByteLevelJson();
  json["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  testing::TempDir dir;
  std::ofstream(dir.path() + "/tokenizer.json") << json.dump();
  absl::StatusOr<std::unique_ptr<TokenizerJson>> t =
      TokenizerJson::Load(dir.path() + "/tokenizer.json");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("BertPreTokenizer"), std::string::npos);
}

// The status code of Tokenizer::Load for ByteLevelJson() changed by
// `mutate` (tokenizer.json) and `config` (tokenizer_config.json).
absl::StatusCode LoadCode(const std::function<void(Json&)>& mutate,
                          const Json& config = {{"eos_token", "<eos>"}}) {
  Json json = ByteLevelJson();
  mutate(json);
  testing::TempDir dir;
  std::ofstream(dir.path() + "/tokenizer.json") << json.dump();
  std::ofstream(dir.path() + "/tokenizer_config.json") << config.dump();
  return Tokenizer::Load(dir.path()).status().code();
}

// Regression: fields of the wrong type used to throw
// nlohmann::json::type_error out of Load; an id past 2^31 wrapped to a
// negative index (out-of-bounds write) and a huge one asked for a huge
// table; an added token id of 2^31-1 overflowed vocab_size.
TEST(TokenizerJsonTest, MalformedDocumentsAreInvalidArgument) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(LoadCode([](Json& j) { j["model"]["type"] = 5; }), kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) { j["decoder"] = 5; }), kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) {
              j["pre_tokenizer"] = {{"type", "Sequence"},
                                    {"pretokenizers", {{{"type", false}}}}};
            }),
            kInvalid);
  EXPECT_EQ(
      LoadCode([](Json& j) {
        j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", 5}}}};
      }),
      kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) { j["added_tokens"][0]["content"] = 5; }),
            kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) { j["model"]["vocab"]["zz"] = 3000000000; }),
            kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) { j["model"]["vocab"]["zz"] = 1 << 24; }),
            kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) { j["added_tokens"][1]["id"] = -1; }),
            kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) { j["added_tokens"][1]["id"] = 2147483647; }),
            kInvalid);
  // A Strip decoder's count as a huge double (UBSan: float-cast-overflow
  // in the int conversion, found by tokenizer_load_fuzzer) and negative.
  EXPECT_EQ(LoadCode([](Json& j) {
              j["decoder"] = {{"type", "Strip"}, {"start", 2.66667e+80}};
            }),
            kInvalid);
  EXPECT_EQ(LoadCode([](Json& j) {
              j["decoder"] = {{"type", "Strip"}, {"stop", -1}};
            }),
            kInvalid);
  const Json config = {
      {"eos_token", "<eos>"},
      {"chat_template", Json::array({{{"name", 5}, {"template", "x"}}})}};
  EXPECT_EQ(LoadCode([](Json&) {}, config), kInvalid);
}

// Nesting deep enough to overflow the stack of the code that reads the
// document (copies of its parts) is refused by the reader.
TEST(TokenizerJsonTest, DeeplyNestedDocumentIsInvalidNotACrash) {
  Json json = ByteLevelJson();
  json["normalizer"]["x"] = "DEEP";
  std::string text = json.dump();
  const int depth = 200'000;
  text.replace(text.find("\"DEEP\""), 6,
               std::string(depth, '[') + std::string(depth, ']'));
  testing::TempDir dir;
  std::ofstream(dir.path() + "/tokenizer.json") << text;
  absl::StatusOr<std::unique_ptr<TokenizerJson>> t =
      TokenizerJson::Load(dir.path() + "/tokenizer.json");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("nests deeper"), std::string::npos)
      << t.status();
}

// TinyLlama's tokenizer.json (SentencePiece-style BPE, legacy Prepend +
// Replace normalizer) gives Hugging Face's ids, and the same as its
// tokenizer.model.
TEST(TokenizerJsonFixtureTest, TinyLlamaJsonMatchesHuggingFaceAndSpm) {
  const std::string fixture = testing::TinyLlamaFixture();
  LATHE_SKIP_WITHOUT_FIXTURES(fixture);
  auto json =
      Tokenizer::Load(fixture + "/model", TokenizerFile::kTokenizerJson);
  ASSERT_TRUE(json.ok()) << json.status();
  ASSERT_TRUE((*json)->from_tokenizer_json());
  auto spm = Tokenizer::Load(fixture + "/model", TokenizerFile::kSentencePiece);
  ASSERT_TRUE(spm.ok()) << spm.status();
  std::ifstream expected_file(fixture + "/expected.jsonl");
  std::string line;
  int checked = 0;
  for (; std::getline(expected_file, line); ++checked) {
    const Json expected = Json::parse(line);
    const std::string text = expected["rendered"];
    EXPECT_EQ(Ids(**json, text),
              expected["input_ids"].get<std::vector<int32_t>>())
        << "conversation " << checked;
  }
  EXPECT_EQ(checked, 6);
  for (const std::string text :
       {"Hello  world\n\ttabs", "  two leading",
        "caf\xC3\xA9 \xE2\x98\x95 "
        "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x91\x8D",
        "x = [1, 22, 333];  // code"}) {
    EXPECT_EQ(Ids(**json, text), Ids(**spm, text)) << text;
    EXPECT_EQ(*(*json)->Decode(Ids(**json, text)), text) << text;
    EXPECT_EQ(*(*spm)->Decode(Ids(**spm, text)), text) << text;
  }
  // The legacy normalizer prepends "▁" to each segment after an added
  // token, which decoding turns into a space, as Hugging Face does.
  EXPECT_EQ(Ids(**json, "a</s>b <s> c"), Ids(**spm, "a</s>b <s> c"));
  EXPECT_EQ(*(*json)->Decode(Ids(**json, "a</s>\n")), "a</s> \n");
}

TEST(TokenizerJsonFixtureTest, SmolLm2SplitsLikeGpt2AndRoundTrips) {
  const std::string dir = SmolLm2Dir();
  if (dir.empty()) GTEST_SKIP() << "no SmolLM2 fixture";
  auto t = Tokenizer::Load(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE((*t)->from_tokenizer_json());
  EXPECT_EQ((*t)->eos_id(), 0);

  // Its pre-tokenizer: Digits (individual) then the GPT-2 regex.
  std::ifstream in(dir + "/tokenizer.json");
  const Json config = Json::parse(in);
  absl::StatusOr<PreTokenizer> pre =
      PreTokenizer::FromJson(config["pre_tokenizer"]);
  ASSERT_TRUE(pre.ok()) << pre.status();
  auto split = [&](const std::string& text) {
    std::vector<std::string> out;
    for (const AlignedText& p : pre->Apply(AlignedText::Of(text, 0), true)) {
      out.push_back(p.text);
    }
    return out;
  };
  EXPECT_EQ(split("Hello world123"),
            (std::vector<std::string>{"Hello", " world", "1", "2", "3"}));
  // \s+(?!\S) leaves the last space to the word after it.
  EXPECT_EQ(split("a  b\n\n"),
            (std::vector<std::string>{"a", " ", " b", "\n\n"}));
  EXPECT_EQ(split("it's x!?"),
            (std::vector<std::string>{"it", "'s", " x", "!?"}));
  const std::string g = "\xC4\xA0";  // Ġ
  EXPECT_EQ(
      Ids(**t, "Hello world123"),
      (std::vector<int32_t>{(*t)->TokenToId("Hello"),
                            (*t)->TokenToId(g + "world"), (*t)->TokenToId("1"),
                            (*t)->TokenToId("2"), (*t)->TokenToId("3")}));
  EXPECT_EQ(Ids(**t, "<|im_start|>user"),
            (std::vector<int32_t>{1, (*t)->TokenToId("user")}));

  for (const std::string text :
       {"Cr\xC3\xA8me br\xC3\xBBl\xC3\xA9e, na\xC3\xAFve fa\xC3\xA7"
        "ade",
        "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, "
        "\xD0\xBC\xD0\xB8\xD1\x80!",
        "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3"
        "\x80\x82\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
        "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 \xD8\xA8\xD8\xA7\xD9\x84"
        "\xD8\xB9\xD8\xA7\xD9\x84\xD9\x85",
        "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0"
        "\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 \xE2\x9C\xA8",
        "  lead\t\ttabs   runs \n\n\n  \r\n end  ",
        "int main() {\n    return x[0] + 12345;  // \xE2\x86\x92 ok\n}\n",
        "<|im_start|>assistant\nhi<|im_end|>\n"}) {
    absl::StatusOr<std::string> back = (*t)->Decode(Ids(**t, text));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, text);
  }
}

}  // namespace
}  // namespace lathe::engine
