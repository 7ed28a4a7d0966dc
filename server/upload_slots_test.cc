#include "server/upload_slots.h"

#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "absl/strings/match.h"

namespace lathe {
namespace {

TEST(UploadSlotsTest, RefusesBeyondEachLimitNamingItsFlag) {
  UploadSlots slots({.per_key = 2, .per_server = 3});
  std::vector<UploadSlots::Slot> held;
  for (int i = 0; i < 2; ++i) {
    auto s = slots.Acquire("key-a");
    ASSERT_TRUE(s.ok()) << s.status();
    held.push_back(*std::move(s));
  }
  auto third = slots.Acquire("key-a");
  EXPECT_TRUE(absl::IsResourceExhausted(third.status()));
  EXPECT_TRUE(absl::StartsWith(third.status().message(),
                               "max_uploads_in_flight_per_key:"))
      << third.status();
  auto b = slots.Acquire("key-b");
  ASSERT_TRUE(b.ok()) << b.status();
  auto c = slots.Acquire("key-c");
  EXPECT_TRUE(absl::IsResourceExhausted(c.status()));
  EXPECT_TRUE(absl::StartsWith(c.status().message(), "max_uploads_in_flight:"))
      << c.status();
  EXPECT_EQ(slots.in_flight(), 3);
  EXPECT_EQ(slots.in_flight("key-a"), 2);
  EXPECT_EQ(slots.in_flight("key-c"), 0);
}

TEST(UploadSlotsTest, ASlotIsFreedWhenDestroyedAndOnlyOnce) {
  UploadSlots slots({.per_key = 1, .per_server = 1});
  {
    auto s = slots.Acquire("key-a");
    ASSERT_TRUE(s.ok());
    UploadSlots::Slot moved = *std::move(s);  // the moved-from frees nothing
    EXPECT_EQ(slots.in_flight(), 1);
    EXPECT_FALSE(slots.Acquire("key-b").ok());
  }
  EXPECT_EQ(slots.in_flight(), 0);
  EXPECT_EQ(slots.in_flight("key-a"), 0);
  EXPECT_TRUE(slots.Acquire("key-b").ok());
}

}  // namespace
}  // namespace lathe
