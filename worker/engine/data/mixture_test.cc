#include "worker/engine/data/mixture.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/data/cursor.h"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

MixtureSpec Spec(const std::string& strategy,
                 const std::vector<double>& weights,
                 const std::string& stop = "all_exhausted") {
  MixtureSpec spec{.strategy = strategy, .stop = stop};
  for (size_t i = 0; i < weights.size(); ++i) {
    spec.sources.push_back(
        {.name = absl::StrCat("s", i), .file = "f", .weight = weights[i]});
  }
  return spec;
}

// Per source, how many of `draws` indices fall in it.
std::vector<int64_t> CountBySource(const MixturePlan& plan,
                                   const std::vector<size_t>& draws) {
  std::vector<int64_t> counts(plan.sources.size(), 0);
  for (size_t index : draws) {
    for (size_t i = 0; i < plan.sources.size(); ++i) {
      const MixturePlan::Source& s = plan.sources[i];
      if (index >= s.offset && index < s.offset + s.size) ++counts[i];
    }
  }
  return counts;
}

// `epochs` epochs of `plan`'s draws from one generator.
std::vector<size_t> Draw(const MixturePlan& plan, int epochs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<size_t> all;
  for (int e = 0; e < epochs; ++e) {
    std::vector<size_t> epoch = DrawEpoch(plan, rng);
    EXPECT_EQ(epoch.size(), plan.EpochSize());
    all.insert(all.end(), epoch.begin(), epoch.end());
  }
  return all;
}

// The 99.9 % two-sided binomial interval (normal approximation,
// z = 3.2905) around n * p.
void ExpectWithinBinomial(int64_t count, int64_t n, double p) {
  const double sd = std::sqrt(n * p * (1 - p));
  EXPECT_NEAR(static_cast<double>(count), n * p, 3.2905 * sd)
      << "n " << n << " p " << p;
}

// METHODS.md §2.2 defining test: sizes (100, 10, 1), weights (0.5, 0.3,
// 0.2), with replacement: 10 000 draws within the 99.9 % binomial intervals
// of 5000 / 3000 / 2000.
TEST(MixtureTest, WeightedDrawsFollowTheWeights) {
  const MixturePlan plan =
      PlanMixture(Spec("weighted", {0.5, 0.3, 0.2}), {100, 10, 1});
  // all_exhausted: max(100 / 0.5, 10 / 0.3, 1 / 0.2) = 200 draws an epoch.
  ASSERT_EQ(plan.EpochSize(), 200u);
  for (uint64_t seed : {1u, 7u}) {
    const std::vector<int64_t> counts =
        CountBySource(plan, Draw(plan, 50, seed));
    ExpectWithinBinomial(counts[0], 10000, 0.5);
    ExpectWithinBinomial(counts[1], 10000, 0.3);
    ExpectWithinBinomial(counts[2], 10000, 0.2);
  }
  // first_exhausted: min(200, floor(33.3), 5).
  EXPECT_EQ(PlanMixture(Spec("weighted", {0.5, 0.3, 0.2}, "first_exhausted"),
                        {100, 10, 1})
                .EpochSize(),
            5u);
}

// T -> infinity is uniform (about 3333 of 10 000 each); T = 1 is
// proportional to the sizes.
TEST(MixtureTest, TemperatureInterpolatesProportionalToUniform) {
  const MixturePlan uniform = PlanMixture(
      [] {
        MixtureSpec s = Spec("temperature", {1, 1, 1});
        s.temperature = 1e9;
        return s;
      }(),
      {100, 10, 1});
  for (const MixturePlan::Source& s : uniform.sources) {
    EXPECT_NEAR(s.probability, 1.0 / 3, 1e-6);
  }
  ASSERT_EQ(uniform.EpochSize(), 300u);  // max(100 / (1/3), ...)
  std::vector<size_t> draws = Draw(uniform, 34, 3);
  draws.resize(10000);
  for (int64_t count : CountBySource(uniform, draws)) {
    ExpectWithinBinomial(count, 10000, 1.0 / 3);
  }
  const MixturePlan proportional =
      PlanMixture(Spec("temperature", {5, 5, 5}), {100, 10, 1});
  EXPECT_NEAR(proportional.sources[0].probability, 100.0 / 111, 1e-12);
  EXPECT_NEAR(proportional.sources[2].probability, 1.0 / 111, 1e-12);
}

// concat reads every example once; a regulariser with proportion r is
// exactly r of each epoch, on top.
TEST(MixtureTest, ConcatWithARegulariserHasExactCounts) {
  MixtureSpec spec = Spec("concat", {1, 1, 1});
  spec.sources[2].proportion = 0.2;
  const MixturePlan plan = PlanMixture(spec, {30, 10, 50});
  // The drawn sources give 40; 0.2 / 0.8 * 40 = 10 general examples.
  ASSERT_EQ(plan.EpochSize(), 50u);
  std::mt19937_64 rng(5);
  for (int epoch = 0; epoch < 3; ++epoch) {
    const std::vector<size_t> draws = DrawEpoch(plan, rng);
    EXPECT_EQ(CountBySource(plan, draws), (std::vector<int64_t>{30, 10, 10}));
    // Without replacement: 50 distinct examples, all of the first two
    // sources among them.
    EXPECT_EQ(std::set<size_t>(draws.begin(), draws.end()).size(), 50u);
  }
  // Weighted sources with a regulariser: it is r of the epoch too.
  MixtureSpec weighted = Spec("weighted", {0.5, 0.5, 1});
  weighted.sources[2].proportion = 0.1;
  const MixturePlan w = PlanMixture(weighted, {20, 20, 100});
  EXPECT_EQ(w.sources[2].fixed, 4u);  // round(0.1 / 0.9 * 40 draws)
  EXPECT_EQ(w.EpochSize(), 44u);
}

// A cursor over a mixture, its state copied mid-epoch (as a checkpoint
// does: rng, order, epoch, next), continues with the same draws.
TEST(MixtureTest, CursorResumesTheSameDraws) {
  const MixturePlan plan = PlanMixture(Spec("weighted", {0.6, 0.4}), {17, 9});
  DataCursor reference = DataCursor::Start(26, 11, &plan);
  DataCursor stopped = DataCursor::Start(26, 11, &plan);
  for (int step = 0; step < 7; ++step) stopped.TakeStep(3, 2);
  std::stringstream rng;
  rng << stopped.rng;
  DataCursor resumed = DataCursor::Start(26, 999, &plan);
  rng >> resumed.rng;
  resumed.order = stopped.order;
  resumed.epoch = stopped.epoch;
  resumed.next = stopped.next;
  for (int step = 0; step < 7; ++step) reference.TakeStep(3, 2);
  for (int step = 0; step < 40; ++step) {
    EXPECT_EQ(resumed.TakeStep(3, 2), reference.TakeStep(3, 2)) << step;
  }
  EXPECT_GT(reference.epoch, 2);
}

TEST(MixtureTest, SubsampleIsSeededAndWithoutReplacement) {
  const std::vector<size_t> a = Subsample(1000, 1.0 / 256, 4);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, Subsample(1000, 1.0 / 256, 4));
  EXPECT_NE(a, Subsample(1000, 1.0 / 256, 5));
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(std::set<size_t>(a.begin(), a.end()).size(), 3u);
  EXPECT_EQ(Subsample(7, 1, 4).size(), 7u);
}

// METHODS.md §2.2 DMT defining test: stage 2 (general + a fraction k of
// each specialised source, concat) holds exactly |general| + sum
// floor(k * |spec_i|) examples, each bit-identical to an input example.
TEST(MixtureTest, DmtStageTwoHoldsGeneralPlusKOfEachSpecialisedSource) {
  const std::string fixture = testing::TinyLlamaFixture();
  if (fixture.empty()) GTEST_SKIP() << "no shared fixtures";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(fixture + "/model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  testing::TempDir dir;
  auto write = [&](const std::string& name, int lines) {
    const std::string path = dir.path() + "/" + name + ".jsonl";
    std::ofstream out(path);
    for (int i = 0; i < lines; ++i) {
      out << R"({"prompt": ")" << name << " question " << i
          << R"(", "completion": " answer )" << i * 7 << "\"}\n";
    }
    return path;
  };
  const double k = 1.0 / 256;
  DataSpec data{.max_seq_len = 64};
  data.mixture.sources = {
      {.name = "general", .file = write("general", 5)},
      {.name = "math", .file = write("math", 600), .fraction = k},
      {.name = "code", .file = write("code", 1030), .fraction = k}};
  const absl::StatusOr<ChatTemplate> no_template =
      absl::NotFoundError("no template");
  absl::StatusOr<MixtureData> mixture =
      LoadMixture(data, **tokenizer, no_template, 42);
  ASSERT_TRUE(mixture.ok()) << mixture.status();
  const size_t want = 5 + 2 + 4;  // floor(600 / 256), floor(1030 / 256)
  EXPECT_EQ(mixture->examples.size(), want);
  EXPECT_EQ(mixture->plan.EpochSize(), want);
  std::mt19937_64 rng(1);
  const std::vector<size_t> epoch = DrawEpoch(mixture->plan, rng);
  EXPECT_EQ(std::set<size_t>(epoch.begin(), epoch.end()).size(), want);
  // Bit-identical to the inputs, each a distinct example of its file.
  for (size_t i = 0; i < data.mixture.sources.size(); ++i) {
    absl::StatusOr<Dataset> original =
        LoadChatDataset(data.mixture.sources[i].file, **tokenizer, no_template,
                        data.max_seq_len);
    ASSERT_TRUE(original.ok());
    const MixturePlan::Source& s = mixture->plan.sources[i];
    std::set<size_t> matched;
    for (size_t j = s.offset; j < s.offset + s.size; ++j) {
      const Example& e = mixture->examples[j];
      auto it =
          std::find_if(original->examples.begin(), original->examples.end(),
                       [&](const Example& o) {
                         return o.ids == e.ids && o.loss_mask == e.loss_mask;
                       });
      ASSERT_NE(it, original->examples.end()) << "source " << i;
      matched.insert(it - original->examples.begin());
    }
    EXPECT_EQ(matched.size(), s.size);
  }
}

}  // namespace
}  // namespace lathe::engine
