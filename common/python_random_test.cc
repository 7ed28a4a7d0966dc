// Values printed by CPython 3.11.7 (python3 -c "import random; ..."), the
// reference S²FT's finetune.py draws with; written here, not produced by
// this code.
#include "common/python_random.h"

#include <vector>

#include "common/s2ft_selection.h"
#include "gtest/gtest.h"

namespace lathe {
namespace {

TEST(PythonRandomTest, SampleMatchesCPythonWithThePoolMethod) {
  // random.seed(42); random.sample(range(20), 7)
  PythonRandom r(42);
  EXPECT_EQ(r.SampleRange(20, 7),
            (std::vector<int64_t>{3, 0, 8, 7, 16, 2, 11}));
  // random.seed(12345678901234); random.sample(range(5), 5): a two-word seed
  PythonRandom big(12345678901234);
  EXPECT_EQ(big.SampleRange(5, 5), (std::vector<int64_t>{0, 1, 3, 2, 4}));
}

TEST(PythonRandomTest, SampleMatchesCPythonWithTheSetMethod) {
  // random.seed(0); random.sample(range(1000), 30)
  PythonRandom r(0);
  EXPECT_EQ(
      r.SampleRange(1000, 30),
      (std::vector<int64_t>{864, 394, 776, 911, 430, 41,  265, 988, 523, 497,
                            414, 940, 802, 849, 310, 991, 488, 366, 597, 913,
                            929, 223, 516, 142, 288, 143, 773, 97,  633, 818}));
  // random.seed(3); random.sample(range(100), 3)
  PythonRandom small(3);
  EXPECT_EQ(small.SampleRange(100, 3), (std::vector<int64_t>{30, 75, 69}));
  // random.seed(2**40 + 3); random.sample(range(10**6), 4)
  PythonRandom wide((int64_t{1} << 40) + 3);
  EXPECT_EQ(wide.SampleRange(1000000, 4),
            (std::vector<int64_t>{230463, 63787, 576159, 874263}));
}

TEST(PythonRandomTest, GetRandBitsMatchesCPythonAcrossWords) {
  // random.seed(-5); getrandbits(40), getrandbits(64), getrandbits(7)
  PythonRandom r(-5);
  EXPECT_EQ(r.GetRandBits(40), uint64_t{281848216645});
  EXPECT_EQ(r.GetRandBits(64), uint64_t{6613812840851947673ULL});
  EXPECT_EQ(r.GetRandBits(7), uint64_t{101});
}

// The reference's own selection code (finetune.py lines 292-350) run in
// CPython for these shapes: sorted(random.sample(mha_indices, num_v)), then
// o, then u and d over ffn_indices, after random.seed(seed).
TEST(S2ftSelectionTest, EqualsTheReferenceScriptsDraws) {
  const S2ftSelection s = SelectS2ft(
      {.layers = 2, .heads = 4, .kv_heads = 4, .intermediate = 16},
      {.v_ratio = 0.25, .o_ratio = 0.5, .u_ratio = 0.25, .d_ratio = 0.5}, 0);
  // select_v [6, 7], select_o [0, 2, 4, 6] over 4 heads x 2 layers
  EXPECT_EQ(s.v_heads, (std::vector<std::vector<int64_t>>{{}, {2, 3}}));
  EXPECT_EQ(s.o_heads, (std::vector<std::vector<int64_t>>{{0, 2}, {0, 2}}));
  // select_u [9, 11, 12, 15, 25, 26, 29, 31] over 16 channels x 2 layers
  EXPECT_EQ(s.up_channels, (std::vector<std::vector<int64_t>>{
                               {9, 11, 12, 15}, {9, 10, 13, 15}}));
  // select_d [2, 3, 4, 8, 9, 10, 13, 16, 17, 19, 24, 25, 26, 27, 28, 29]
  EXPECT_EQ(s.down_channels,
            (std::vector<std::vector<int64_t>>{
                {2, 3, 4, 8, 9, 10, 13}, {0, 1, 3, 8, 9, 10, 11, 12, 13}}));
  EXPECT_EQ(s.Count(), 2 + 4 + 8 + 16);
}

TEST(S2ftSelectionTest, LargePoolsUseTheSetMethodAsTheReference) {
  // LLaMA-2's script ratios (o 0.052, d 0.03) on 3 layers of 8 heads and
  // 1000 channels, seed 7: int(24 * 0.052) = 1 head, int(3000 * 0.03) = 90.
  const S2ftSelection s =
      SelectS2ft({.layers = 3, .heads = 8, .kv_heads = 8, .intermediate = 1000},
                 {.o_ratio = 0.052, .d_ratio = 0.03}, 7);
  EXPECT_EQ(s.o_heads, (std::vector<std::vector<int64_t>>{{}, {2}, {}}));
  const std::vector<int64_t> expected = {
      153,  190,  197,  203,  237,  242,  244,  253,  257,  286,  296,  299,
      335,  352,  371,  385,  399,  422,  482,  483,  507,  545,  590,  617,
      622,  675,  736,  740,  769,  843,  879,  905,  914,  985,  999,  1017,
      1179, 1186, 1227, 1229, 1263, 1286, 1401, 1406, 1481, 1497, 1525, 1617,
      1624, 1712, 1716, 1738, 1751, 1776, 1838, 1856, 1907, 2002, 2027, 2033,
      2078, 2096, 2151, 2177, 2194, 2214, 2243, 2257, 2280, 2294, 2311, 2316,
      2338, 2339, 2352, 2363, 2382, 2387, 2398, 2494, 2535, 2569, 2583, 2616,
      2666, 2786, 2793, 2863, 2916, 2987};
  std::vector<int64_t> flat;
  for (size_t layer = 0; layer < s.down_channels.size(); ++layer) {
    for (int64_t c : s.down_channels[layer])
      flat.push_back(static_cast<int64_t>(layer) * 1000 + c);
  }
  EXPECT_EQ(flat, expected);
  EXPECT_TRUE(s.v_heads[0].empty() && s.up_channels[2].empty());
}

TEST(S2ftSelectionTest, CountsTruncateAsPython) {
  EXPECT_EQ(S2ftCount(24, 0.052), 1);
  EXPECT_EQ(S2ftCount(3000, 0.03), 90);
  EXPECT_EQ(S2ftCount(10, 0.29), 2);  // 2.9 truncated
  EXPECT_EQ(S2ftCount(10, 0), 0);
}

}  // namespace
}  // namespace lathe
