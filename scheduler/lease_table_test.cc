#include "scheduler/lease_table.h"

#include <gtest/gtest.h>

namespace lathe::scheduler {
namespace {

TEST(LeaseTableTest, RenewExpireAndFence) {
  LeaseTable leases(absl::Seconds(10));
  absl::Time t0 = absl::FromUnixSeconds(1000);
  leases.Grant("job", 1, "w1", t0);
  EXPECT_TRUE(leases.Renew("job", 1, t0 + absl::Seconds(8)));
  EXPECT_FALSE(leases.Renew("job", 2, t0 + absl::Seconds(8)));  // not the holder
  EXPECT_TRUE(leases.Expired(t0 + absl::Seconds(17)).empty());
  auto expired = leases.Expired(t0 + absl::Seconds(19));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].job_id, "job");
  EXPECT_EQ(expired[0].attempt, 1);
  EXPECT_TRUE(leases.Get("job").has_value());  // Expired() only looks
  EXPECT_FALSE(leases.TakeIfExpired("job", 2, t0 + absl::Seconds(19)));
  EXPECT_FALSE(leases.TakeIfExpired("job", 1, t0 + absl::Seconds(17)));
  EXPECT_TRUE(leases.TakeIfExpired("job", 1, t0 + absl::Seconds(19)));
  EXPECT_FALSE(leases.Get("job").has_value());
  EXPECT_FALSE(leases.Renew("job", 1, t0 + absl::Seconds(20)));
}

TEST(RetryBackoffTest, DoublesUpToCap) {
  EXPECT_EQ(RetryBackoff(1, absl::Seconds(2), absl::Seconds(30)), absl::Seconds(2));
  EXPECT_EQ(RetryBackoff(2, absl::Seconds(2), absl::Seconds(30)), absl::Seconds(4));
  EXPECT_EQ(RetryBackoff(4, absl::Seconds(2), absl::Seconds(30)), absl::Seconds(16));
  EXPECT_EQ(RetryBackoff(10, absl::Seconds(2), absl::Seconds(30)), absl::Seconds(30));
}

}  // namespace
}  // namespace lathe::scheduler
