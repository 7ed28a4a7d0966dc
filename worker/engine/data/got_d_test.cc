#include "worker/engine/data/got_d.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/test_util.h"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// n points around (x, y) with standard deviation sigma.
std::vector<std::vector<float>> Cluster(std::mt19937& rng, int n, float x,
                                        float y, float sigma) {
  std::normal_distribution<float> noise(0, sigma);
  std::vector<std::vector<float>> out;
  for (int i = 0; i < n; ++i) out.push_back({x + noise(rng), y + noise(rng)});
  return out;
}

// METHODS.md §8.1's problem: 50 candidates near (5, 5), then 50 near
// (0, 0); 20 targets near (0.5, 0.5).
struct Clusters {
  std::vector<std::vector<float>> candidates, targets;
};
Clusters TwoClusters() {
  std::mt19937 rng(7);
  Clusters c;
  c.candidates = Cluster(rng, 50, 5, 5, 0.3f);
  const auto near = Cluster(rng, 50, 0, 0, 0.3f);
  c.candidates.insert(c.candidates.end(), near.begin(), near.end());
  c.targets = Cluster(rng, 20, 0.5f, 0.5f, 0.3f);
  return c;
}

std::vector<double> SquaredDistances(const std::vector<std::vector<float>>& x,
                                     const std::vector<std::vector<float>>& y) {
  std::vector<double> c;
  for (const auto& p : x) {
    for (const auto& q : y) {
      double d = 0;
      for (size_t k = 0; k < p.size(); ++k) {
        const double x = static_cast<double>(p[k]) - q[k];
        d += x * x;
      }
      c.push_back(d);
    }
  }
  return c;
}

std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  for (size_t r = 0; r < order.size(); ++r) rank[order[r]] = r;
  return rank;
}

// Spearman's rho of two samples without ties.
double Spearman(const std::vector<double>& x, const std::vector<double>& y) {
  const std::vector<double> rx = Ranks(x), ry = Ranks(y);
  double d2 = 0;
  for (size_t i = 0; i < x.size(); ++i) d2 += (rx[i] - ry[i]) * (rx[i] - ry[i]);
  const double n = x.size();
  return 1 - 6 * d2 / (n * (n * n - 1));
}

std::vector<double> Centered(std::vector<double> v) {
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  for (double& x : v) x -= mean;
  return v;
}

// POT's f = reg * log(u) for the problem, computed now by
// got_d_pot_reference.py under Debian's python3 with python3-pot.
std::vector<double> PotDuals(const std::vector<double>& cost,
                             const std::vector<double>& a,
                             const std::vector<double>& b, double reg) {
  testing::TempDir dir;
  const std::string problem = dir.path() + "/problem.json";
  std::ofstream(problem) << Json{{"n", a.size()}, {"m", b.size()}, {"a", a},
                                 {"b", b},        {"cost", cost},  {"reg", reg}}
                                .dump();
  const std::string command = std::string(LATHE_PYTHON3) + " " +
                              LATHE_POT_REFERENCE + " " + problem + " 2>&1";
  std::string output;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buffer[4096];
    while (size_t got = fread(buffer, 1, sizeof(buffer), pipe)) {
      output.append(buffer, got);
    }
    if (pclose(pipe) != 0) output = "exit status non-zero: " + output;
  }
  const Json reply = Json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded() || !reply.contains("f")) {
    ADD_FAILURE() << "the POT reference needs " << LATHE_PYTHON3
                  << " with POT (Debian's python3-pot; "
                     "scripts/install-deps.sh installs it). `"
                  << command << "` said:\n"
                  << output;
    return {};
  }
  // The spec was checked against POT 0.8.2 (Debian 12); Debian 13's root
  // for the LibTorch 2.x build has 0.9, whose plain sinkhorn keeps 'u'.
  EXPECT_TRUE(reply.contains("version") && reply["version"].is_string());
  ::testing::Test::RecordProperty("pot_version", reply.value("version", std::string("?")));
  return reply["f"].get<std::vector<double>>();
}

void ExpectSameUpToAConstant(const std::vector<double>& ours,
                             const std::vector<double>& pot) {
  ASSERT_EQ(ours.size(), pot.size());
  EXPECT_DOUBLE_EQ(Spearman(ours, pot), 1.0);
  const std::vector<double> x = Centered(ours), y = Centered(pot);
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::abs(x[i] - y[i]));
  EXPECT_LT(worst, 1e-6);
}

TEST(GotDTest, SelectsTheClusterNearTheTarget) {
  const Clusters c = TwoClusters();
  const absl::StatusOr<GotDResult> r =
      GotDSelect(c.candidates, c.targets, {.budget = 10, .normalize = false});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->selected.size(), 10u);
  for (int64_t i : r->selected)
    EXPECT_GE(i, 50) << "selected from (5, 5): " << i;
  EXPECT_TRUE(r->duals.converged);
  EXPECT_LT(r->duals.marginal_error, 1e-8);
  // The default epsilon is a tenth of the median squared distance.
  EXPECT_DOUBLE_EQ(r->median_cost,
                   Median(SquaredDistances(c.candidates, c.targets)));
  EXPECT_DOUBLE_EQ(r->epsilon, 0.1 * r->median_cost);
  // G_i = f_i - mean of the other f, and the selection is G's 10 smallest.
  const std::vector<double>& f = r->duals.f;
  const double total = std::accumulate(f.begin(), f.end(), 0.0);
  for (size_t i = 0; i < f.size(); ++i) {
    EXPECT_NEAR(r->gradient[i], f[i] - (total - f[i]) / 99, 1e-9) << i;
  }
  std::vector<double> sorted = r->gradient;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i : r->selected) EXPECT_LE(r->gradient[i], sorted[9]);
  EXPECT_TRUE(std::is_sorted(
      r->selected.begin(), r->selected.end(),
      [&](int64_t x, int64_t y) { return r->gradient[x] < r->gradient[y]; }));
}

// §8.1 step 6: random shards of the pool against the whole target. With
// 4 shards of 25 the budget of 10 is split by largest remainders (2.5
// each, so 3, 3, 2 and 2), every pick still comes from the (0, 0) cluster, the same seed
// gives the same selection, and a shard as large as the pool is
// GotDSelect itself.
TEST(GotDTest, ShardsOfThePoolEachKeepTheirShareTowardsTheTarget) {
  const Clusters c = TwoClusters();
  const GotDOptions options{.budget = 10, .normalize = false};
  const absl::StatusOr<GotDShardedResult> r =
      GotDSelectSharded(c.candidates, c.targets, options, /*shard_size=*/25, /*seed=*/3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->shards, 4);
  ASSERT_EQ(r->result.selected.size(), 10u);
  std::set<int64_t> distinct(r->result.selected.begin(), r->result.selected.end());
  EXPECT_EQ(distinct.size(), 10u);
  for (int64_t i : r->result.selected) EXPECT_GE(i, 50) << "selected from (5, 5): " << i;
  EXPECT_GT(r->result.epsilon, 0);
  EXPECT_LT(r->max_marginal_error, 1e-8);
  const absl::StatusOr<GotDShardedResult> again =
      GotDSelectSharded(c.candidates, c.targets, options, 25, 3);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->result.selected, r->result.selected);
  const absl::StatusOr<GotDShardedResult> whole =
      GotDSelectSharded(c.candidates, c.targets, options, 100, 3);
  const absl::StatusOr<GotDResult> plain = GotDSelect(c.candidates, c.targets, options);
  ASSERT_TRUE(whole.ok() && plain.ok());
  EXPECT_EQ(whole->shards, 1);
  EXPECT_EQ(whole->result.selected, plain->selected);
  EXPECT_EQ(whole->result.gradient, plain->gradient);
}

TEST(GotDTest, DualsAgreeWithPot) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> unit(0, 1);
  // A random problem with non-uniform weights.
  const size_t n = 40, m = 25;
  std::vector<double> cost(n * m), a(n), b(m);
  for (double& x : cost) x = 2 * unit(rng);
  for (double& x : a) x = 0.5 + unit(rng);
  for (double& x : b) x = 0.5 + unit(rng);
  const double sa = std::accumulate(a.begin(), a.end(), 0.0);
  const double sb = std::accumulate(b.begin(), b.end(), 0.0);
  for (double& x : a) x /= sa;
  for (double& x : b) x /= sb;
  for (double reg : {0.1, 0.5}) {
    absl::StatusOr<SinkhornResult> ours =
        LogSinkhorn(cost, a, b, {.epsilon = reg});
    ASSERT_TRUE(ours.ok()) << ours.status();
    EXPECT_TRUE(ours->converged);
    ExpectSameUpToAConstant(ours->f, PotDuals(cost, a, b, reg));
  }
  // The clusters at GotDSelect's own epsilon.
  const Clusters c = TwoClusters();
  const absl::StatusOr<GotDResult> r =
      GotDSelect(c.candidates, c.targets, {.budget = 10, .normalize = false});
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectSameUpToAConstant(r->duals.f,
                          PotDuals(SquaredDistances(c.candidates, c.targets),
                                   std::vector<double>(100, 0.01),
                                   std::vector<double>(20, 0.05), r->epsilon));
}

TEST(GotDTest, NormalisedCostIsTwoMinusTwoCosine) {
  // Scaled copies of one direction cost 0 after normalisation: with the
  // target along (1, 0), the candidate along it is selected first even
  // though it is far away in Euclidean terms.
  const std::vector<std::vector<float>> candidates = {
      {0, 3}, {100, 0}, {-1, -1}};
  const absl::StatusOr<GotDResult> r =
      GotDSelect(candidates, {{1, 0}, {2, 0}}, {.budget = 1, .epsilon = 0.05});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->selected, std::vector<int64_t>{1});
  EXPECT_DOUBLE_EQ(r->epsilon, 0.05);
  // Costs 2, 0 and 2 + sqrt(2) per target: the median is 2.
  EXPECT_NEAR(r->median_cost, 2, 1e-12);
}

TEST(GotDTest, BadInputIsRefusedNamingIt) {
  const std::vector<std::vector<float>> two = {{0, 1}, {1, 0}};
  auto message = [](const absl::StatusOr<GotDResult>& r) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  EXPECT_NE(message(GotDSelect({{0, 1}}, two, {.budget = 1}))
                .find("at least 2 candidates"),
            std::string::npos);
  EXPECT_NE(message(GotDSelect(two, {}, {.budget = 1})).find("target"),
            std::string::npos);
  EXPECT_NE(message(GotDSelect(two, two, {.budget = 0})).find("budget"),
            std::string::npos);
  EXPECT_NE(
      message(GotDSelect(two, {{1, 0, 0}}, {.budget = 1})).find("targets[0]"),
      std::string::npos);
  EXPECT_NE(message(GotDSelect({{0, 1}, {0, 0}}, two, {.budget = 1}))
                .find("candidates[1] is zero"),
            std::string::npos);
  EXPECT_NE(message(GotDSelect(two, two, {.budget = 1, .epsilon_fraction = -1}))
                .find("epsilon_fraction"),
            std::string::npos);
  EXPECT_NE(message(GotDSelect(two, two, {.budget = 1, .epsilon = NAN}))
                .find("epsilon"),
            std::string::npos);
  EXPECT_EQ(LogSinkhorn({1, 2}, {0.5, 0.5}, {0.5, 0.5}, {.epsilon = 1})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      LogSinkhorn({1, 2}, {1.5, -0.5}, {1}, {.epsilon = 1}).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lathe::engine
