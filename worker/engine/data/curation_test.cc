#include "worker/engine/data/curation.h"

#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace lathe::engine {
namespace {

// The true Jaccard similarity of two texts' shingle sets, by set
// operations.
double TrueJaccard(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int k) {
  auto shingles = [&](const std::vector<int32_t>& ids) {
    std::set<std::vector<int32_t>> s;
    for (size_t i = 0; i + k <= ids.size(); ++i) s.insert({ids.begin() + i, ids.begin() + i + k});
    return s;
  };
  const auto x = shingles(a), y = shingles(b);
  size_t both = 0;
  for (const auto& s : x) both += y.count(s);
  return static_cast<double>(both) / (x.size() + y.size() - both);
}

std::vector<int32_t> RandomIds(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int32_t> id(0, 30000);
  std::vector<int32_t> ids(n);
  for (int32_t& v : ids) v = id(rng);
  return ids;
}

TEST(CurationTest, MinHashEstimatesTheShingleJaccard) {
  std::mt19937 rng(3);
  const MinHashOptions o{.num_hashes = 256, .bands = 64};
  const std::vector<int32_t> a = RandomIds(rng, 300);
  for (int changed : {2, 10, 40, 150}) {
    std::vector<int32_t> b = a;
    for (int i = 0; i < changed; ++i) b[(i * 37) % b.size()] = 40000 + i;
    const double truth = TrueJaccard(a, b, o.shingle);
    const double estimate =
        EstimatedJaccard(MinHashSignature(a, o), MinHashSignature(b, o));
    // The estimate's standard deviation is sqrt(J (1 - J) / 256) <= 0.031.
    EXPECT_NEAR(estimate, truth, 0.1) << changed << " tokens changed";
  }
  EXPECT_EQ(EstimatedJaccard(MinHashSignature(a, o), MinHashSignature(a, o)), 1);
  // Seeded: the same seed the same signature, another seed another.
  EXPECT_EQ(MinHashSignature(a, o), MinHashSignature(a, o));
  MinHashOptions other = o;
  other.seed = 9;
  EXPECT_NE(MinHashSignature(a, other), MinHashSignature(a, o));
}

TEST(CurationTest, DuplicatesAndValidationOverlapAreFound) {
  std::mt19937 rng(5);
  const std::vector<int32_t> base = RandomIds(rng, 200);
  std::vector<int32_t> near = base;
  near[100] = 50000;  // one token: about 5 of ~196 shingles differ
  const std::vector<int32_t> other = RandomIds(rng, 200);
  const std::vector<int32_t> held_out = RandomIds(rng, 120);
  std::vector<int32_t> leaked = held_out;
  leaked[3] = 50001;
  const std::vector<std::vector<int32_t>> train = {base, other, base, near, leaked, held_out};
  const std::vector<DuplicateInfo> info =
      FindDuplicates(train, {RandomIds(rng, 80), held_out}, MinHashOptions{});
  ASSERT_EQ(info.size(), 6u);
  EXPECT_EQ(info[0].exact_of, -1);
  EXPECT_EQ(info[0].near_of, -1);
  EXPECT_EQ(info[1].near_of, -1);  // unrelated
  EXPECT_EQ(info[2].exact_of, 0);
  EXPECT_EQ(info[2].near_of, -1);  // exact, so not also near
  EXPECT_EQ(info[3].exact_of, -1);
  EXPECT_EQ(info[3].near_of, 0);
  EXPECT_GE(info[3].near_jaccard, 0.8);
  EXPECT_EQ(info[4].validation_exact, -1);
  EXPECT_EQ(info[4].validation_near, 1);
  EXPECT_EQ(info[5].validation_exact, 1);
  EXPECT_EQ(info[5].near_of, 4);  // the leaked copy came first
  for (int i : {0, 1, 2, 3}) {
    EXPECT_EQ(info[i].validation_exact, -1) << i;
    EXPECT_EQ(info[i].validation_near, -1) << i;
  }
}

}  // namespace
}  // namespace lathe::engine
