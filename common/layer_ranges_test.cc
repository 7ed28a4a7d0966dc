#include "common/layer_ranges.h"

#include "gtest/gtest.h"

namespace lathe {
namespace {

TEST(LayerRangesTest, IndicesRangesAndBandsResolveSortedOnce) {
  absl::StatusOr<std::vector<int>> layers =
      ResolveLayerRanges({"5", "2-3", "3"}, 8, "trainable.layers");
  ASSERT_TRUE(layers.ok()) << layers.status();
  EXPECT_EQ(*layers, (std::vector<int>{2, 3, 5}));
  // METHODS.md §2.3: bottom2 of the 32-layer model is 8-15, of a 4-layer
  // model layer 1 alone.
  EXPECT_EQ(*ResolveLayerRanges({"bottom2"}, 32, "f"),
            (std::vector<int>{8, 9, 10, 11, 12, 13, 14, 15}));
  EXPECT_EQ(*ResolveLayerRanges({"bottom2"}, 4, "f"), (std::vector<int>{1}));
  EXPECT_EQ(ResolveLayerRanges({"top-plus"}, 32, "f")->front(), 16);
  EXPECT_EQ(ResolveLayerRanges({"middle-plus"}, 32, "f")->back(), 23);
}

TEST(LayerRangesTest, BadEntriesAreRefusedNamingTheEntry) {
  for (const char* bad : {"x", "3-", "-1", "4-2", "1-2-3", "", "+1"}) {
    absl::Status status = CheckLayerRanges({"0", bad}, "trainable.layers");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(status.message().find("trainable.layers[1]"), std::string::npos)
        << status;
  }
  absl::StatusOr<std::vector<int>> out =
      ResolveLayerRanges({"2-4"}, 4, "lora.layers_to_transform");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("layer 4 does not exist"),
            std::string::npos)
      << out.status();
  EXPECT_FALSE(ResolveLayerRanges({"bottom1"}, 3, "f").ok());
}

}  // namespace
}  // namespace lathe
