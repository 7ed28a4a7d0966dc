#include "worker/engine/data/clear.h"

#include <cmath>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

TEST(ClearTest, TokenF1IsSquads) {
  EXPECT_DOUBLE_EQ(TokenF1("The capital is Paris.", "paris is the capital"), 1);
  // Common {capital, is}: precision 2/3, recall 2/3.
  EXPECT_DOUBLE_EQ(TokenF1("capital is Rome", "the capital is Paris"), 2.0 / 3);
  // Multisets: "blue" twice against once: precision 1/2, recall 1.
  EXPECT_DOUBLE_EQ(TokenF1("blue blue", "blue"), 2 * 0.5 * 1 / 1.5);
  EXPECT_DOUBLE_EQ(TokenF1("", "a the"), 1);  // both empty after normalising
  EXPECT_DOUBLE_EQ(TokenF1("green", ""), 0);
  EXPECT_DOUBLE_EQ(TokenF1("green", "red"), 0);
}

TEST(ClearTest, SimilarityUsesTheExtractedAnswerWhereThereIsOne) {
  const AnswerExtractor numbers{.kind = "last_number"};
  EXPECT_EQ(ResponseSimilarity(&numbers, "so it is 12.0", "3 plus 9 is 12"), 1);
  EXPECT_EQ(ResponseSimilarity(&numbers, "3 plus 9 is 13", "3 plus 9 is 12"),
            0);
  EXPECT_EQ(ResponseSimilarity(&numbers, "no idea", "3 plus 9 is 12"), 0);
  // A reference without an answer falls back to token F1.
  EXPECT_DOUBLE_EQ(ResponseSimilarity(&numbers, "blue sky", "sky"),
                   TokenF1("blue sky", "sky"));
  EXPECT_DOUBLE_EQ(
      ResponseSimilarity(nullptr, "3 plus 9 is 13", "3 plus 9 is 12"),
      0.8);  // 4 of 5 tokens
}

// A scripted scorer: each line's signals from a table. The kept set is
// exactly what the score and the thresholds dictate.
TEST(ClearTest, ScriptedScorerKeepsExactlyWhatTheThresholdsDictate) {
  const std::vector<ClearSignals> table = {
      {.log_likelihood = -0.5, .consistency = 1.0, .reflection = 0.9},  // 0.97
      {.log_likelihood = -3.0, .consistency = 0.2, .reflection = 0.5},  // 0.29
      {.log_likelihood = -1.0, .consistency = 0.6, .reflection = 0.1},  // 0.45
      {.log_likelihood = -0.2, .consistency = 0.0, .reflection = 1.0},  // 0.30
      {.log_likelihood = -2.0, .consistency = 0.8, .reflection = 0.8},  // 0.80
      {.log_likelihood = -0.9, .consistency = 0.5, .reflection = 0.5},  // 0.50
  };
  std::vector<int64_t> asked;
  auto scripted = [&](int64_t i) -> absl::StatusOr<ClearSignals> {
    asked.push_back(i);
    return table[i];
  };
  auto kept = [](const std::vector<ClearVerdict>& v) {
    std::set<int64_t> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i].reasons.empty()) out.insert(static_cast<int64_t>(i));
    }
    return out;
  };
  // Confidence with alpha 0.7 and tau 0.4: 0.29 and 0.30 go.
  absl::StatusOr<std::vector<ClearVerdict>> v = ClearFilter(
      6, scripted, {.score = ClearScore::kConfidence, .threshold = 0.4});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(asked, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_NEAR((*v)[0].score, 0.97, 1e-12);
  EXPECT_NEAR((*v)[2].score, 0.45, 1e-12);
  EXPECT_EQ(kept(*v), (std::set<int64_t>{0, 2, 4, 5}));
  EXPECT_EQ((*v)[1].reasons,
            std::vector<std::string>{"clear_confidence_below_0.4"});
  // The bottom half by confidence: 0.29, 0.30, 0.45.
  v = ClearFilter(6, scripted,
                  {.score = ClearScore::kConfidence, .drop_fraction = 0.5});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(kept(*v), (std::set<int64_t>{0, 4, 5}));
  EXPECT_EQ((*v)[3].reasons,
            std::vector<std::string>{"clear_confidence_in_bottom_0.5"});
  // alpha 0: the reflection alone; floor(0.4 * 6) = 2 dropped: lines 2
  // (0.1) and 1 (0.5, the earlier of the two at 0.5).
  v = ClearFilter(
      6, scripted,
      {.score = ClearScore::kConfidence, .alpha = 0, .drop_fraction = 0.4});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(kept(*v), (std::set<int64_t>{0, 3, 4, 5}));
  // Log-likelihood with both filters: below -1.5 (lines 1, 4) and the
  // lowest 34 % (2 of 6: lines 1, 4 again): both reasons on each.
  v = ClearFilter(6, scripted,
                  {.score = ClearScore::kLogLikelihood,
                   .threshold = -1.5,
                   .drop_fraction = 0.34});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(kept(*v), (std::set<int64_t>{0, 2, 3, 5}));
  EXPECT_EQ((*v)[4].reasons,
            (std::vector<std::string>{"clear_log_likelihood_below_-1.5",
                                      "clear_log_likelihood_in_bottom_0.34"}));
  EXPECT_DOUBLE_EQ((*v)[3].score, -0.2);
  // Nothing set: everything kept.
  v = ClearFilter(6, scripted, {});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(kept(*v).size(), 6u);
}

TEST(ClearTest, UnscoredPairsCountAsLowestAndBadOptionsAreRefused) {
  auto scores = [](int64_t i) -> absl::StatusOr<ClearSignals> {
    return ClearSignals{.log_likelihood =
                            i == 1 ? std::nan("") : -static_cast<double>(i)};
  };
  absl::StatusOr<std::vector<ClearVerdict>> v = ClearFilter(
      4, scores, {.score = ClearScore::kLogLikelihood, .drop_fraction = 0.25});
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE((*v)[1].reasons.empty());
  EXPECT_TRUE((*v)[3].reasons.empty());
  v = ClearFilter(4, scores,
                  {.score = ClearScore::kLogLikelihood, .threshold = -10});
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE((*v)[1].reasons.empty());
  EXPECT_TRUE((*v)[2].reasons.empty());
  for (const ClearOptions& bad :
       {ClearOptions{.alpha = 1.5}, ClearOptions{.drop_fraction = 1},
        ClearOptions{.threshold = INFINITY}}) {
    EXPECT_EQ(ClearFilter(4, scores, bad).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  auto failing = [](int64_t) -> absl::StatusOr<ClearSignals> {
    return absl::InternalError("scorer broke");
  };
  EXPECT_EQ(ClearFilter(2, failing, {}).status().message(), "scorer broke");
}

}  // namespace
}  // namespace lathe::engine
