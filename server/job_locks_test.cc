#include "server/job_locks.h"

#include <gtest/gtest.h>

#include <future>

namespace lathe {
namespace {

TEST(JobLocksTest, OneJobAtATimeOthersFreelyAndNothingKeptOnceUnused) {
  JobLocks locks;
  std::future<void> same;
  {
    JobLocks::Lock a = locks.Acquire("ftjob-a");
    // Another job's lock is not held up by this one.
    auto other =
        std::async(std::launch::async, [&] { locks.Acquire("ftjob-b"); });
    EXPECT_EQ(other.wait_for(std::chrono::seconds(30)),
              std::future_status::ready);
    // The same job's waits for it.
    same = std::async(std::launch::async, [&] { locks.Acquire("ftjob-a"); });
    EXPECT_EQ(same.wait_for(std::chrono::milliseconds(50)),
              std::future_status::timeout);
    EXPECT_EQ(locks.in_use(), 1);  // ftjob-a: held and waited for
  }
  EXPECT_EQ(same.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(locks.in_use(), 0);
}

}  // namespace
}  // namespace lathe
