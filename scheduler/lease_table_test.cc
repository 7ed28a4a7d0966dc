#include "scheduler/lease_table.h"

#include <gtest/gtest.h>

namespace lathe::scheduler {
namespace {

TEST(LeaseTableTest, RenewExpireAndFence) {
  LeaseTable leases(absl::Seconds(10));
  absl::Time t0 = absl::FromUnixSeconds(1000);
  leases.Grant("job", 1, "w1", t0);
  EXPECT_TRUE(leases.Renew("job", 1, t0 + absl::Seconds(8)));
  EXPECT_FALSE(
      leases.Renew("job", 2, t0 + absl::Seconds(8)));  // not the holder
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

TEST(LeaseTableTest, AGangHoldsALeasePerRank) {
  LeaseTable leases(absl::Seconds(10));
  absl::Time t0 = absl::FromUnixSeconds(1000);
  leases.Grant("gang", 3, "w0", t0);
  leases.Grant("gang", 3, "w1", t0, /*rank=*/1);
  leases.Grant("gang", 3, "w2", t0, /*rank=*/2);
  ASSERT_TRUE(leases.Get("gang", 1).has_value());
  EXPECT_EQ(leases.Get("gang", 1)->worker_id, "w1");
  EXPECT_EQ(leases.Get("gang", 1)->rank, 1);
  EXPECT_EQ(leases.Get("gang")->worker_id, "w0");  // rank 0 by default
  EXPECT_FALSE(leases.Get("gang", 3).has_value());
  // Ranks renew on their own: only rank 2 is left to expire.
  EXPECT_TRUE(leases.Renew("gang", 3, t0 + absl::Seconds(8)));
  EXPECT_TRUE(leases.Renew("gang", 3, t0 + absl::Seconds(8), 1));
  EXPECT_FALSE(leases.Renew("gang", 3, t0 + absl::Seconds(8), 5));
  EXPECT_FALSE(leases.Renew("gang", 2, t0 + absl::Seconds(8), 1));
  auto expired = leases.Expired(t0 + absl::Seconds(11));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].rank, 2);
  EXPECT_EQ(expired[0].worker_id, "w2");
  EXPECT_FALSE(leases.TakeIfExpired("gang", 3, t0 + absl::Seconds(11), 1));
  EXPECT_TRUE(leases.TakeIfExpired("gang", 3, t0 + absl::Seconds(11), 2));
  EXPECT_FALSE(leases.Get("gang", 2).has_value());
  EXPECT_TRUE(leases.Get("gang", 1).has_value());
  // One rank released; then all of them.
  leases.ReleaseRank("gang", 1);
  EXPECT_FALSE(leases.Get("gang", 1).has_value());
  EXPECT_TRUE(leases.Get("gang").has_value());
  leases.Grant("gang", 3, "w1", t0, 1);
  leases.Release("gang");
  EXPECT_FALSE(leases.Get("gang").has_value());
  EXPECT_FALSE(leases.Get("gang", 1).has_value());
  EXPECT_TRUE(leases.Expired(t0 + absl::Hours(1)).empty());
}

TEST(LeaseTableTest, ANewAttemptSupersedesTheOldAttemptsRanks) {
  LeaseTable leases(absl::Seconds(10));
  absl::Time t0 = absl::FromUnixSeconds(1000);
  leases.Grant("job", 1, "w0", t0);
  leases.Grant("job", 1, "w1", t0, 1);
  leases.Grant("job", 2, "w5", t0);
  EXPECT_FALSE(leases.Get("job", 1).has_value());
  EXPECT_EQ(leases.Get("job")->attempt, 2);
  EXPECT_EQ(leases.Expired(t0 + absl::Seconds(11)).size(), 1u);
}

TEST(RetryBackoffTest, DoublesUpToCap) {
  EXPECT_EQ(RetryBackoff(1, absl::Seconds(2), absl::Seconds(30)),
            absl::Seconds(2));
  EXPECT_EQ(RetryBackoff(2, absl::Seconds(2), absl::Seconds(30)),
            absl::Seconds(4));
  EXPECT_EQ(RetryBackoff(4, absl::Seconds(2), absl::Seconds(30)),
            absl::Seconds(16));
  EXPECT_EQ(RetryBackoff(10, absl::Seconds(2), absl::Seconds(30)),
            absl::Seconds(30));
}

}  // namespace
}  // namespace lathe::scheduler
