#include "common/half_ft.h"

#include "gtest/gtest.h"

namespace lathe {
namespace {

// METHODS.md §4.1: 2 of the 4 attention matrices in every layer, 2 of the 3
// MLP ones in ⌊L/2⌋ layers and 1 in the others.
TEST(HalfFtTest, HalfIsMethodsTwoOfFourAndTwoOrOneOfThree) {
  for (int64_t layers = 0; layers <= 9; ++layers) {
    const HalfFtMatrices m = HalfFtMatrixCounts(0.5, layers);
    EXPECT_EQ(m.attention, 2 * layers) << layers;
    EXPECT_EQ(m.mlp, 2 * (layers / 2) + (layers - layers / 2)) << layers;
  }
}

TEST(HalfFtTest, CountsRoundToNearestWithHalvesDown) {
  // 4 layers, 28 matrices: 0.3 x 28 = 8.4 -> 8, 0.3 x 16 = 4.8 -> 5.
  HalfFtMatrices m = HalfFtMatrixCounts(0.3, 4);
  EXPECT_EQ(m.attention, 5);
  EXPECT_EQ(m.mlp, 3);
  // 2 layers, 14 matrices: 0.25 x 14 = 3.5 -> 3, 0.25 x 8 = 2.
  m = HalfFtMatrixCounts(0.25, 2);
  EXPECT_EQ(m.attention, 2);
  EXPECT_EQ(m.mlp, 1);
  // 1 layer: 0.05 x 7 = 0.35 -> 0 matrices.
  EXPECT_EQ(HalfFtMatrixCounts(0.05, 1).total(), 0);
  m = HalfFtMatrixCounts(1.0, 32);
  EXPECT_EQ(m.attention, 128);
  EXPECT_EQ(m.mlp, 96);
}

TEST(HalfFtTest, EachGroupStaysWithinTheModel) {
  for (int64_t layers = 1; layers <= 40; ++layers) {
    for (int i = 1; i <= 100; ++i) {
      const HalfFtMatrices m = HalfFtMatrixCounts(i / 100.0, layers);
      EXPECT_GE(m.attention, 0);
      EXPECT_LE(m.attention, 4 * layers);
      EXPECT_GE(m.mlp, 0);
      EXPECT_LE(m.mlp, 3 * layers);
    }
  }
}

}  // namespace
}  // namespace lathe
