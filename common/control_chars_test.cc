#include "common/control_chars.h"

#include <gtest/gtest.h>

namespace lathe {
namespace {

TEST(ControlCharsTest, FindsC0DelC1AndBidiControls) {
  struct Case {
    std::string s;
    uint32_t code_point;
    size_t offset;
  };
  const Case cases[] = {
      {"a\x1b[2J", 0x1B, 1},
      {"\r", 0x0D, 0},
      {"ab\n", 0x0A, 2},
      {"\a", 0x07, 0},
      {"x\x7f", 0x7F, 1},
      {"\xc2\x9b"
       "2J",
       0x9B, 0},
      {"\xc3\xa9\xe2\x80\xae", 0x202E, 2},  // é then RIGHT-TO-LEFT OVERRIDE
      {"\xd8\x9c", 0x061C, 0},
      {"\xe2\x81\xa6", 0x2066, 0},
  };
  for (const Case& c : cases) {
    auto found = FindControlChar(c.s);
    ASSERT_TRUE(found.has_value()) << c.s;
    EXPECT_EQ(found->code_point, c.code_point) << c.s;
    EXPECT_EQ(found->offset, c.offset) << c.s;
  }
}

TEST(ControlCharsTest, OrdinaryNamesHaveNone) {
  // é, …, CJK, an emoji, a space and a continuation-like byte 0x85 inside
  // "…" (E2 80 A6) or "Å" (C3 85): none is a control.
  for (const std::string s :
       {"train.jsonl", "caf\xc3\xa9 data.jsonl", "\xe2\x80\xa6", "\xc3\x85",
        "\xe6\x95\xb0\xe6\x8d\xae", "\xf0\x9f\x98\x80", " ", "\xff\x85"}) {
    EXPECT_FALSE(FindControlChar(s).has_value()) << s;
  }
}

TEST(ControlCharsTest, EscapesForPrinting) {
  EXPECT_EQ(EscapeControlChars("a\x1b[2Jb\r\n"), "a\\u001B[2Jb\\u000D\\u000A");
  EXPECT_EQ(EscapeControlChars("caf\xc3\xa9\xe2\x80\xaeq"),
            "caf\xc3\xa9\\u202Eq");
  EXPECT_EQ(EscapeControlChars("x\xff\\"), "x\\xff\\\\");
  EXPECT_EQ(EscapeControlChars("plain.jsonl"), "plain.jsonl");
}

}  // namespace
}  // namespace lathe
