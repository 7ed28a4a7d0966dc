#include "worker/engine/optim/schedule.h"

#include <cmath>

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

TEST(ScheduleTest, WarmupThenLinearDecay) {
  // 10 steps, 2 of warmup, peak 1.0, as transformers' linear schedule.
  const auto kLin = LrSchedule::kLinear;
  EXPECT_DOUBLE_EQ(LearningRateAt(kLin, 0, 10, 2, 1.0), 0.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(kLin, 1, 10, 2, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(kLin, 2, 10, 2, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(kLin, 6, 10, 2, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(kLin, 9, 10, 2, 1.0), 0.125);
}

TEST(ScheduleTest, NoWarmupStartsAtPeak) {
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kLinear, 0, 4, 0, 2e-3), 2e-3);
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kLinear, 3, 4, 0, 2e-3), 0.5e-3);
}

TEST(ScheduleTest, WarmupThenCosineDecay) {
  // transformers' get_cosine_schedule_with_warmup, 0.5 cycles.
  const auto kCos = LrSchedule::kCosine;
  EXPECT_DOUBLE_EQ(LearningRateAt(kCos, 1, 10, 2, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(kCos, 2, 10, 2, 1.0), 1.0);
  EXPECT_NEAR(LearningRateAt(kCos, 6, 10, 2, 1.0), 0.5, 1e-12);
  EXPECT_NEAR(LearningRateAt(kCos, 4, 10, 2, 1.0),
              0.5 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_NEAR(LearningRateAt(kCos, 9, 10, 2, 1.0),
              0.5 * (1 + std::cos(M_PI * 7 / 8)), 1e-12);
}

TEST(ScheduleTest, ConstantAfterWarmup) {
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kConstant, 1, 10, 2, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kConstant, 9, 10, 2, 1.0), 1.0);
}

TEST(ScheduleTest, ParsesNames) {
  EXPECT_EQ(*ParseLrSchedule("cosine"), LrSchedule::kCosine);
  EXPECT_EQ(*ParseLrSchedule("linear"), LrSchedule::kLinear);
  absl::StatusOr<LrSchedule> bad = ParseLrSchedule("step");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("lr_scheduler"), std::string::npos);
}

}  // namespace
}  // namespace lathe::engine
