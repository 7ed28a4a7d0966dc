#include "worker/engine/schedule.h"

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

TEST(ScheduleTest, WarmupThenLinearDecay) {
  // 10 steps, 2 of warmup, peak 1.0, as transformers' linear schedule.
  EXPECT_DOUBLE_EQ(LearningRateAt(0, 10, 2, 1.0), 0.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(1, 10, 2, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(2, 10, 2, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(6, 10, 2, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(9, 10, 2, 1.0), 0.125);
}

TEST(ScheduleTest, NoWarmupStartsAtPeak) {
  EXPECT_DOUBLE_EQ(LearningRateAt(0, 4, 0, 2e-3), 2e-3);
  EXPECT_DOUBLE_EQ(LearningRateAt(3, 4, 0, 2e-3), 0.5e-3);
}

}  // namespace
}  // namespace lathe::engine
