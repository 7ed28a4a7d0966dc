#include "common/echo.h"

#include <gtest/gtest.h>

namespace lathe {
namespace {

TEST(EchoTest, PrintableAsciiIsKept) {
  EXPECT_EQ(Echo("ftjob-abc 1"), "ftjob-abc 1");
}

TEST(EchoTest, ControlsBackslashAndNonAsciiAreEscaped) {
  EXPECT_EQ(Echo(std::string("a\x1b[2J\r\n\a\\\xff\0", 11)),
            "a\\x1b[2J\\x0d\\x0a\\x07\\x5c\\xff\\x00");
}

TEST(EchoTest, LongInputIsCutAndItsSizeNamed) {
  std::string id(100'000, 'x');
  std::string e = Echo(id);
  EXPECT_EQ(e, std::string(64, 'x') + "...(100000 bytes)");
  EXPECT_EQ(Echo("abcdef", 3), "abc...(6 bytes)");
}

}  // namespace
}  // namespace lathe
