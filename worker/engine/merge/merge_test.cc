// The merge methods against plain per-tensor computations written here with
// basic tensor ops and loops (not the library's), METHODS.md §5's worked
// numbers, LoRA inputs and the re-factorised adapter, and greedy soups.
#include "worker/engine/merge/merge.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/merge/greedy_soup.h"
#include "worker/engine/merge/merge_tensor.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/model_export.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using Reference = std::function<torch::Tensor(
    const std::string& name, const std::vector<torch::Tensor>& taus)>;

torch::Tensor T(std::vector<double> values) {
  return torch::tensor(values, torch::kFloat64);
}

void ExpectValues(const torch::Tensor& got, std::vector<double> want,
                  double tol = 1e-12) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  const torch::Tensor g = got.to(torch::kFloat64).contiguous();
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(g[i].item<double>(), want[i], tol) << "entry " << i;
  }
}

// Plain TIES over flattened float64 task vectors (METHODS §5.3, mergekit's
// divisor): a sort-based trim, the vote, the agreeing weighted mean.
torch::Tensor PlainTies(const std::vector<torch::Tensor>& taus,
                        const std::vector<double>& w, double density,
                        bool by_count, bool trim = true) {
  const int64_t n = taus[0].numel();
  std::vector<std::vector<double>> kept;
  for (const torch::Tensor& tau : taus) {
    const torch::Tensor flat = tau.reshape({-1}).contiguous();
    std::vector<double> v(flat.data_ptr<double>(), flat.data_ptr<double>() + n);
    if (trim) {
      std::vector<double> mags;
      for (double x : v) mags.push_back(std::abs(x));
      std::sort(mags.rbegin(), mags.rend());
      const int64_t k = static_cast<int64_t>(std::floor(density * n));
      for (double& x : v) {
        if (k == 0 || std::abs(x) < mags[k - 1]) x = 0;
      }
    }
    kept.push_back(v);
  }
  std::vector<double> out(n);
  for (int64_t j = 0; j < n; ++j) {
    double vote = 0;
    for (size_t i = 0; i < taus.size(); ++i) {
      const double d = w[i] * kept[i][j];
      vote += by_count ? (d > 0) - (d < 0) : d;
    }
    const double sign = vote >= 0 ? 1 : -1;
    double sum = 0, divisor = 0;
    for (size_t i = 0; i < taus.size(); ++i) {
      const double d = w[i] * kept[i][j];
      if (d != 0 && (d > 0) == (sign > 0)) {
        sum += d;
        divisor += w[i];
      }
    }
    out[j] = std::abs(divisor) < 1e-8 ? 0 : sum / divisor;
  }
  return torch::tensor(out, torch::kFloat64).view(taus[0].sizes());
}

// Plain Breadcrumbs of one row-major tensor: per row, sort by |.| and keep
// ranks [floor(gamma n), floor(gamma n) + floor(beta n)).
torch::Tensor PlainBreadcrumbs(const torch::Tensor& tau, double beta,
                               double gamma) {
  if (tau.dim() == 0) return tau;
  const int64_t n = tau.size(-1);
  const torch::Tensor rows = tau.reshape({-1, n}).contiguous().clone();
  const int64_t top = static_cast<int64_t>(std::floor(gamma * n));
  const int64_t keep = static_cast<int64_t>(std::floor(beta * n));
  for (int64_t r = 0; r < rows.size(0); ++r) {
    double* row = rows[r].data_ptr<double>();
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return std::abs(row[a]) > std::abs(row[b]);
    });
    for (int64_t rank = 0; rank < n; ++rank) {
      if (rank < top || rank >= top + keep) row[order[rank]] = 0;
    }
  }
  return rows.view(tau.sizes());
}

// The decoder layer of "model.layers.{l}.", written here again.
int PlainLayer(const std::string& name) {
  if (name.rfind("model.layers.", 0) != 0) return -1;
  return std::stoi(name.substr(13));
}

class MergeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
  }
  static void TearDownTestSuite() {
    delete demo_;
    demo_ = nullptr;
  }

  static std::string BaseDir() { return demo_->path() + "/model"; }

  TensorMap BaseWeights() { return LoadModelWeights(BaseDir()).value(); }

  // A "fine-tune": the base plus seeded noise of `scale` on every tensor,
  // written as a model folder.
  std::string WriteFineTune(const std::string& name, double scale, int seed) {
    torch::manual_seed(seed);
    TensorMap weights = BaseWeights();
    for (auto& [n, t] : weights) t = t + scale * torch::randn_like(t);
    const std::string dir = dir_.path() + "/" + name;
    EXPECT_TRUE(CopyModelFolderFiles(BaseDir(), dir).ok());
    EXPECT_TRUE(
        SaveSafetensors(dir + "/model.safetensors", weights, {{"format", "pt"}})
            .ok());
    return dir;
  }

  // A random LoRA adapter on the base: rank r on `modules`, lora_alpha
  // `alpha`, A and B random.
  std::string WriteLora(const std::string& name, int rank, double alpha,
                        std::vector<std::string> modules, int seed,
                        bool rslora = false) {
    std::unique_ptr<LlamaModel> model = LlamaModel::Load(BaseDir()).value();
    LoraSpec spec;
    spec.rank = rank;
    spec.alpha = alpha;
    spec.use_rslora = rslora;
    spec.target_modules = std::move(modules);
    torch::manual_seed(seed);
    EXPECT_TRUE(AttachLora(*model, spec).ok());
    {
      torch::NoGradGuard no_grad;
      for (auto& [n, t] : LoraParameters(*model)) t.normal_(0, 0.1);
    }
    const std::string dir = dir_.path() + "/" + name;
    EXPECT_TRUE(SaveAdapter(*model, spec, BaseDir(), dir).ok());
    return dir;
  }

  MergeSpec Spec(MergeMethod method, std::vector<std::string> inputs) {
    MergeSpec spec;
    spec.base_dir = BaseDir();
    for (const std::string& dir : inputs) spec.inputs.push_back({.dir = dir});
    spec.params.method = method;
    spec.output_dir = dir_.path() + "/out" + std::to_string(outputs_++);
    return spec;
  }

  // Runs the merge and returns the merged folder's weights.
  TensorMap Merge(const MergeSpec& spec, MergeResult* result = nullptr) {
    absl::StatusOr<MergeResult> r = RunMerge(spec, {});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    if (result != nullptr) *result = *r;
    return LoadModelWeights(spec.output_dir).value();
  }

  // Expects every merged tensor to equal theta_0 + reference(taus) to
  // float32 rounding, taus being the model inputs' theta_i - theta_0.
  void ExpectMerge(const MergeSpec& spec, const Reference& reference) {
    const TensorMap merged = Merge(spec);
    const TensorMap base = BaseWeights();
    std::vector<TensorMap> inputs;
    for (const MergeInputSpec& input : spec.inputs) {
      inputs.push_back(LoadModelWeights(input.dir).value());
    }
    ASSERT_EQ(merged.size(), base.size());
    double largest_change = 0;
    for (const auto& [name, theta_0] : base) {
      std::vector<torch::Tensor> taus;
      for (const TensorMap& input : inputs) {
        taus.push_back(input.at(name).to(torch::kFloat64) -
                       theta_0.to(torch::kFloat64));
      }
      const torch::Tensor want =
          theta_0.to(torch::kFloat64) + reference(name, taus);
      const torch::Tensor got = merged.at(name).to(torch::kFloat64);
      const double error = (got - want).abs().max().item<double>();
      EXPECT_LE(error, 1e-6 * (1 + want.abs().max().item<double>())) << name;
      largest_change = std::max(
          largest_change,
          (got - theta_0.to(torch::kFloat64)).abs().max().item<double>());
    }
    EXPECT_GT(largest_change, 1e-4);  // the merge changed something
  }

  static testing::TempDir* demo_;
  testing::TempDir dir_;
  int outputs_ = 0;
};

testing::TempDir* MergeTest::demo_ = nullptr;

// ---- METHODS §5's worked numbers, on the per-tensor functions.

const std::vector<double> kTau1 = {0.9, -0.1, 0.4, -0.8, 0.05, 0.3};
const std::vector<double> kTau2 = {-0.5, 0.6, 0.3, -0.2, 0.0, -0.7};
const std::vector<double> kTau3 = {0.2, -0.3, -0.6, 0.1, 0.5, 0.4};

TEST(MergeTensorTest, TiesWorkedExample) {
  const std::vector<torch::Tensor> taus = {T(kTau1), T(kTau2), T(kTau3)};
  ExpectValues(TrimToDensity(taus[0], 0.5), {0.9, 0, 0.4, -0.8, 0, 0});
  ExpectValues(TrimToDensity(taus[1], 0.5), {-0.5, 0.6, 0, 0, 0, -0.7});
  ExpectValues(TrimToDensity(taus[2], 0.5), {0, 0, -0.6, 0, 0.5, 0.4});
  MergeParams p;
  p.method = MergeMethod::kTies;
  p.density = 0.5;
  const TensorSite site = {.name = "t"};
  ExpectValues(MergeTaskVectors(p, {1, 1, 1}, taus, site),
               {0.9, 0.6, -0.6, -0.8, 0.5, -0.7});
  p.majority_sign = MajoritySign::kFrequency;
  ExpectValues(MergeTaskVectors(p, {1, 1, 1}, taus, site),
               {0.9, 0.6, 0.4, -0.8, 0.5, 0.4});
  // Weights [2, 1, 1]: mergekit's divisor (the agreeing weights) gives 0.9
  // at coordinate 0, where PEFT's count would give 1.8.
  p.majority_sign = MajoritySign::kTotal;
  EXPECT_NEAR(MergeTaskVectors(p, {2, 1, 1}, taus, site)[0].item<double>(), 0.9,
              1e-12);
  // lambda scales the result.
  p.lambda = 2;
  ExpectValues(MergeTaskVectors(p, {1, 1, 1}, taus, site),
               {1.8, 1.2, -1.2, -1.6, 1.0, -1.4});
}

TEST(MergeTensorTest, BreadcrumbsWorkedExampleAndEdges) {
  // keep 0.5, top 0.2 of n = 6: remove 0.9, keep the 3 largest of the rest.
  ExpectValues(BreadcrumbsMask(T(kTau1), 0.5, 0.2), {0, 0, 0.4, -0.8, 0, 0.3});
  // floor(gamma n) = 0 removes nothing on top (not everything).
  ExpectValues(BreadcrumbsMask(T(kTau1), 0.5, 0.1), {0.9, 0, 0.4, -0.8, 0, 0});
  ExpectValues(BreadcrumbsMask(T(kTau1), 1.0, 0.0), kTau1);
  // Per row: with floor(gamma n) = 1 each row's largest |.| goes and its
  // 2nd..(k+1)-th stay, k = floor(keep n).
  torch::manual_seed(3);
  const torch::Tensor tau = torch::randn({5, 10}, torch::kFloat64);
  const torch::Tensor masked = BreadcrumbsMask(tau, 0.3, 0.1);
  for (int64_t r = 0; r < 5; ++r) {
    const torch::Tensor order =
        std::get<1>(tau[r].abs().sort(0, /*descending=*/true));
    for (int64_t rank = 0; rank < 10; ++rank) {
      const int64_t j = order[rank].item<int64_t>();
      const double want = rank >= 1 && rank <= 3 ? tau[r][j].item<double>() : 0;
      EXPECT_EQ(masked[r][j].item<double>(), want) << r << "," << rank;
    }
  }
  // A scalar is kept.
  EXPECT_EQ(BreadcrumbsMask(T({0.7}).squeeze(), 0.1, 0.5).item<double>(), 0.7);
}

TEST(MergeTensorTest, LinesMultipliersIncreaseWithTheLayer) {
  std::vector<double> got;
  for (int l = 0; l < 4; ++l) {
    got.push_back(LinesMultiplier({.layer = l, .num_layers = 4}, 0.5, 0.5));
  }
  EXPECT_NEAR(got[0], 0.5, 1e-12);
  EXPECT_NEAR(got[1], 0.5 + 0.5 / 3, 1e-12);
  EXPECT_NEAR(got[2], 0.5 + 1.0 / 3, 1e-12);
  EXPECT_NEAR(got[3], 1.0, 1e-12);
  EXPECT_EQ(LinesMultiplier({.layer = -1, .num_layers = 4}, 0.5, 0.5), 0.5);
}

TEST(MergeTensorTest, DareIsSeededAndUnbiased) {
  torch::manual_seed(5);
  const torch::Tensor tau = torch::randn({40, 25}, torch::kFloat64);
  const double density = 0.1;  // p = 0.9
  const torch::Tensor a = DareDrop(tau, density, 11);
  EXPECT_TRUE(torch::equal(a, DareDrop(tau, density, 11)));
  EXPECT_FALSE(torch::equal(a, DareDrop(tau, density, 12)));
  EXPECT_TRUE(torch::equal(DareDrop(tau, 1.0, 11), tau));  // p = 0
  // Survivors are exactly tau / (1 - p); about (1 - p) n of them.
  const torch::Tensor kept = a != 0;
  EXPECT_TRUE(
      torch::equal(a.masked_select(kept), (tau / density).masked_select(kept)));
  const double survivors = kept.sum().item<double>();
  EXPECT_NEAR(survivors, density * 1000, 4 * std::sqrt(1000 * 0.1 * 0.9));
  // The mean over 2000 seeds is within 3 standard errors of tau.
  torch::Tensor sum = torch::zeros_like(tau), squares = torch::zeros_like(tau);
  const int seeds = 2000;
  for (int s = 0; s < seeds; ++s) {
    const torch::Tensor d = DareDrop(tau, density, DareSeed(s, 0, "t"));
    sum += d;
    squares += d * d;
  }
  const torch::Tensor mean = sum / seeds;
  const torch::Tensor se =
      ((squares / seeds - mean * mean) / (seeds - 1)).sqrt();
  const double outside =
      ((mean - tau).abs() > 3 * se).to(torch::kFloat64).mean().item<double>();
  EXPECT_LT(outside, 0.01);  // ~0.3 % expected by chance
  // Masks differ between inputs and tensors.
  EXPECT_NE(DareSeed(1, 0, "a"), DareSeed(1, 1, "a"));
  EXPECT_NE(DareSeed(1, 0, "a"), DareSeed(1, 0, "b"));
}

TEST(MergeTensorTest, FactorizationReproducesTheDeltaAtItsRank) {
  torch::manual_seed(2);
  const torch::Tensor low =
      torch::matmul(torch::randn({12, 3}, torch::kFloat64),
                    torch::randn({3, 8}, torch::kFloat64));
  for (int rank : {3, 8, 20}) {
    const LowRankFactors f = FactorizeLowRank(low, rank);
    EXPECT_EQ(f.a.sizes(), (std::vector<int64_t>{rank, 8}));
    EXPECT_EQ(f.b.sizes(), (std::vector<int64_t>{12, rank}));
    EXPECT_LT(
        (torch::matmul(f.b.to(torch::kFloat64), f.a.to(torch::kFloat64)) - low)
            .abs()
            .max()
            .item<double>(),
        1e-5);
  }
  const LowRankFactors f = FactorizeLowRank(low, 2);
  EXPECT_GT(
      (torch::matmul(f.b.to(torch::kFloat64), f.a.to(torch::kFloat64)) - low)
          .abs()
          .max()
          .item<double>(),
      1e-3);
}

// ---- Whole merges against plain computations.

TEST_F(MergeTest, LinearIsTheWeightedAverageAndUniformSoupOfCopiesIsTheCopy) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  const std::string b = WriteFineTune("b", 0.05, 2);
  MergeSpec spec = Spec(MergeMethod::kLinear, {a, b});
  spec.params.weights = {0.7, 0.5};
  ExpectMerge(spec,
              [](const std::string&, const std::vector<torch::Tensor>& t) {
                return (0.7 * t[0] + 0.5 * t[1]) / 1.2;
              });
  const TensorMap copy = LoadModelWeights(a).value();
  const TensorMap soup = Merge(Spec(MergeMethod::kLinear, {a, a, a}));
  for (const auto& [name, t] : copy) {
    EXPECT_TRUE(torch::equal(soup.at(name), t)) << name;
  }
}

TEST_F(MergeTest, TaskArithmeticAddsScaledTaskVectors) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  const std::string b = WriteFineTune("b", 0.05, 2);
  MergeSpec spec = Spec(MergeMethod::kTaskArithmetic, {a, b});
  spec.params.weights = {1, -0.5};
  spec.params.lambda = 0.8;
  ExpectMerge(spec,
              [](const std::string&, const std::vector<torch::Tensor>& t) {
                return 0.8 * (t[0] - 0.5 * t[1]);
              });
  // lambda 1 with one task is the fine-tune, lambda 0 the base, bit for bit.
  const TensorMap fine = LoadModelWeights(a).value();
  const TensorMap one = Merge(Spec(MergeMethod::kTaskArithmetic, {a}));
  MergeSpec zero_spec = Spec(MergeMethod::kTaskArithmetic, {a});
  zero_spec.params.lambda = 0;
  const TensorMap zero = Merge(zero_spec);
  const TensorMap base = BaseWeights();
  for (const auto& [name, t] : fine) {
    EXPECT_TRUE(torch::equal(one.at(name), t)) << name;
    EXPECT_TRUE(torch::equal(zero.at(name), base.at(name))) << name;
  }
}

TEST_F(MergeTest, TiesMatchesPlainTies) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  const std::string b = WriteFineTune("b", 0.05, 2);
  const std::string c = WriteFineTune("c", 0.05, 3);
  for (MajoritySign sign : {MajoritySign::kTotal, MajoritySign::kFrequency}) {
    MergeSpec spec = Spec(MergeMethod::kTies, {a, b, c});
    spec.params.weights = {1, 0.5, 2};
    spec.params.density = 0.3;
    spec.params.lambda = 1.5;
    spec.params.majority_sign = sign;
    ExpectMerge(spec,
                [&](const std::string&, const std::vector<torch::Tensor>& t) {
                  return 1.5 * PlainTies(t, {1, 0.5, 2}, 0.3,
                                         sign == MajoritySign::kFrequency);
                });
  }
}

TEST_F(MergeTest, DareKeepsScaledEntriesAndDareTiesIsTiesOfTheDrops) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  const std::string b = WriteFineTune("b", 0.05, 2);
  const std::string c = WriteFineTune("c", 0.05, 3);
  const TensorMap base = BaseWeights();
  // Each input's dropped vector, recovered from dare_linear merges where
  // only that input has weight (its mask depends on seed, position, name).
  std::vector<TensorMap> drops;
  for (int only = 0; only < 3; ++only) {
    MergeSpec spec = Spec(MergeMethod::kDareLinear, {a, b, c});
    spec.params.density = 0.4;
    spec.params.seed = 7;
    spec.params.weights = {0, 0, 0};
    spec.params.weights[only] = 1;
    const TensorMap merged = Merge(spec);
    const TensorMap input = LoadModelWeights(spec.inputs[only].dir).value();
    TensorMap drop;
    int64_t kept = 0, total = 0;
    for (const auto& [name, t] : merged) {
      const torch::Tensor theta_0 = base.at(name).to(torch::kFloat64);
      const torch::Tensor d = t.to(torch::kFloat64) - theta_0;
      const torch::Tensor tau = input.at(name).to(torch::kFloat64) - theta_0;
      const torch::Tensor on = d.abs() > 1e-7;
      // Kept entries are tau / density (to float32 rounding), others 0.
      EXPECT_LE((d - tau / 0.4).masked_select(on).abs().max().item<double>(),
                1e-5)
          << name;
      EXPECT_LE(d.masked_select(~on).abs().max().item<double>(), 1e-7);
      kept += on.sum().item<int64_t>();
      total += on.numel();
      drop[name] = torch::where(on, tau / 0.4, torch::zeros_like(tau));
    }
    EXPECT_NEAR(static_cast<double>(kept) / total, 0.4, 0.01);
    drops.push_back(std::move(drop));
  }
  // The same seed again gives the same merge; another seed another.
  MergeSpec again = Spec(MergeMethod::kDareLinear, {a, b, c});
  again.params.density = 0.4;
  again.params.seed = 7;
  again.params.weights = {1, 0, 0};
  const TensorMap first = Merge(again);
  EXPECT_TRUE(
      torch::equal(Merge(again).begin()->second, first.begin()->second));
  again.params.seed = 8;
  again.output_dir += "-seed8";
  EXPECT_FALSE(
      torch::equal(Merge(again).begin()->second, first.begin()->second));

  MergeSpec spec = Spec(MergeMethod::kDareTies, {a, b, c});
  spec.params.density = 0.4;
  spec.params.seed = 7;
  spec.params.weights = {1, 0.5, 2};
  ExpectMerge(spec, [&](const std::string& name,
                        const std::vector<torch::Tensor>&) {
    return PlainTies({drops[0].at(name), drops[1].at(name), drops[2].at(name)},
                     {1, 0.5, 2}, 1.0, false, /*trim=*/false);
  });
}

TEST_F(MergeTest, BreadcrumbsMatchesPlainBreadcrumbs) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  const std::string b = WriteFineTune("b", 0.05, 2);
  MergeSpec spec = Spec(MergeMethod::kBreadcrumbs, {a, b});
  spec.params.beta = 0.6;
  spec.params.gamma = 0.05;
  spec.params.lambda = 0.4;
  spec.params.weights = {1, 2};
  ExpectMerge(spec,
              [](const std::string&, const std::vector<torch::Tensor>& t) {
                return 0.4 * (PlainBreadcrumbs(t[0], 0.6, 0.05) +
                              2 * PlainBreadcrumbs(t[1], 0.6, 0.05));
              });
}

TEST_F(MergeTest, LinesScalesByLayer) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  const std::string b = WriteFineTune("b", 0.05, 2);
  MergeSpec spec = Spec(MergeMethod::kLines, {a, b});
  spec.params.lines_alpha = 0.3;
  spec.params.lines_beta = 0.5;
  // The demo has 2 layers: layer 0 gets alpha, layer 1 alpha + beta, the
  // embeddings, final norm and head alpha.
  ExpectMerge(spec,
              [](const std::string& name, const std::vector<torch::Tensor>& t) {
                const int l = PlainLayer(name);
                return (l == 1 ? 0.8 : 0.3) * (t[0] + t[1]);
              });
  // alpha 1, beta 0 is task arithmetic with lambda 1.
  MergeSpec lines = Spec(MergeMethod::kLines, {a, b});
  const TensorMap ta = Merge(Spec(MergeMethod::kTaskArithmetic, {a, b}));
  for (const auto& [name, t] : Merge(lines)) {
    EXPECT_TRUE(torch::equal(t, ta.at(name))) << name;
  }
}

// ---- LoRA inputs and the re-factorised adapter.

TEST_F(MergeTest, LoraInputTaskVectorIsScaledBA) {
  for (bool rslora : {false, true}) {
    const std::string lora = WriteLora(rslora ? "rs" : "plain", 4, 8,
                                       {"q_proj", "down_proj"}, 1, rslora);
    const TensorMap merged = Merge(Spec(MergeMethod::kTaskArithmetic, {lora}));
    const TensorMap factors =
        LoadSafetensors(lora + "/adapter_model.safetensors").value();
    const double s = rslora ? 8 / std::sqrt(4.0) : 8 / 4.0;
    int adapted = 0;
    for (const auto& [name, theta_0] : BaseWeights()) {
      const std::string prefix =
          "base_model.model." +
          name.substr(0, name.size() - std::string(".weight").size());
      if (!factors.contains(prefix + ".lora_A.weight")) {
        EXPECT_TRUE(torch::equal(merged.at(name), theta_0)) << name;
        continue;
      }
      ++adapted;
      const torch::Tensor want =
          s * torch::matmul(factors.at(prefix + ".lora_B.weight"),
                            factors.at(prefix + ".lora_A.weight"));
      EXPECT_LT((merged.at(name) - theta_0 - want).abs().max().item<float>(),
                1e-5)
          << name;
    }
    EXPECT_EQ(adapted, 4);  // 2 modules x 2 layers
  }
}

TEST_F(MergeTest, RefactorisedLoraEqualsTheMergedDeltaAndItsLogits) {
  const std::vector<std::string> modules = {"q_proj", "v_proj", "up_proj"};
  const std::string l1 = WriteLora("l1", 4, 8, modules, 1);
  const std::string l2 = WriteLora("l2", 4, 4, modules, 2);
  for (int rank : {64, 8}) {  // full rank; rank(sum) <= 4 + 4
    MergeSpec spec = Spec(MergeMethod::kTaskArithmetic, {l1, l2});
    spec.params.weights = {0.7, -0.3};
    spec.lora.dir = spec.output_dir + "-lora";
    spec.lora.rank = rank;
    MergeResult result;
    const TensorMap merged = Merge(spec, &result);
    EXPECT_EQ(result.lora_target_modules, modules);
    EXPECT_TRUE(result.lora_dropped.empty());
    const nlohmann::json config =
        ReadJsonFile(spec.lora.dir + "/adapter_config.json").value();
    EXPECT_EQ(config["r"], rank);
    EXPECT_EQ(config["lora_alpha"], rank);
    const TensorMap factors =
        LoadSafetensors(spec.lora.dir + "/adapter_model.safetensors").value();
    EXPECT_EQ(factors.size(), 2u * modules.size() * 2);
    const TensorMap base = BaseWeights();
    for (const auto& [key, a] : factors) {
      if (key.find("lora_A") == std::string::npos) continue;
      const std::string stem = key.substr(0, key.find(".lora_A"));
      const std::string name =
          stem.substr(17) + ".weight";  // drop "base_model.model."
      const torch::Tensor delta = merged.at(name) - base.at(name);
      const torch::Tensor ba =
          torch::matmul(factors.at(stem + ".lora_B.weight"), a);
      EXPECT_LT((ba - delta).abs().max().item<float>(), 1e-5) << name;
      EXPECT_GT(delta.abs().max().item<float>(), 1e-3) << name;
    }
    // The adapter on the base computes what the merged folder computes.
    std::unique_ptr<LlamaModel> adapted = LlamaModel::Load(BaseDir()).value();
    ASSERT_TRUE(LoadAdapter(*adapted, spec.lora.dir).ok());
    std::unique_ptr<LlamaModel> folder =
        LlamaModel::Load(spec.output_dir).value();
    const torch::Tensor ids =
        torch::randint(0, folder->config().vocab_size, {2, 12}, torch::kInt64);
    const torch::Tensor mask = torch::ones_like(ids);
    torch::NoGradGuard no_grad;
    const torch::Tensor want = folder->Forward(ids, mask, false);
    const torch::Tensor got = adapted->Forward(ids, mask, false);
    EXPECT_LT((got - want).abs().max().item<float>(), 1e-4);
    std::unique_ptr<LlamaModel> plain = LlamaModel::Load(BaseDir()).value();
    EXPECT_GT(
        (plain->Forward(ids, mask, false) - want).abs().max().item<float>(),
        1e-3);
  }
}

TEST_F(MergeTest, LoraExportOfFullModelsNeedsTargetsAndReportsWhatItDrops) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  MergeSpec spec = Spec(MergeMethod::kTaskArithmetic, {a});
  spec.lora.dir = spec.output_dir + "-lora";
  absl::StatusOr<MergeResult> refused = RunMerge(spec, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("lora.target_modules"),
            std::string::npos);
  spec.lora.target_modules = {"o_proj"};
  MergeResult result;
  Merge(spec, &result);
  EXPECT_EQ(result.lora_target_modules, spec.lora.target_modules);
  // Everything but the two o_proj weights changed and cannot be carried.
  EXPECT_EQ(result.lora_dropped.size(), BaseWeights().size() - 2);
}

// ---- Inputs that are not fine-tunes of the base.

TEST_F(MergeTest, InputOfAnotherShapeIsRefusedNamingIt) {
  testing::TempDir other;
  ASSERT_TRUE(MakeDemo(other.path()).ok());
  ASSERT_TRUE(ResizeDemoModel(other.path(),
                              {.hidden_size = 32, .intermediate_size = 48})
                  .ok());
  const std::string good = WriteFineTune("good", 0.05, 1);
  MergeSpec spec = Spec(MergeMethod::kLinear, {good, other.path() + "/model"});
  spec.inputs[1].name = "model-ft-xyz";
  absl::StatusOr<MergeResult> result = RunMerge(spec, {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("input \"model-ft-xyz\""),
            std::string::npos)
      << result.status();
  EXPECT_NE(result.status().message().find("hidden_size"), std::string::npos);
  EXPECT_EQ(ErrorKindOf(result.status()), ErrorKind::kUserOptions);
  EXPECT_FALSE(std::filesystem::exists(spec.output_dir));

  // Same config, one tensor of another shape.
  TensorMap weights = BaseWeights();
  weights["model.norm.weight"] = torch::ones({3});
  const std::string odd = dir_.path() + "/odd";
  ASSERT_TRUE(CopyModelFolderFiles(BaseDir(), odd).ok());
  ASSERT_TRUE(SaveSafetensors(odd + "/model.safetensors", weights, {}).ok());
  result = RunMerge(Spec(MergeMethod::kLinear, {odd}), {});
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("input \"" + odd + "\""),
            std::string::npos);
  EXPECT_NE(result.status().message().find("model.norm.weight"),
            std::string::npos);

  // A LoRA adapter made for the other model.
  std::unique_ptr<LlamaModel> small =
      LlamaModel::Load(other.path() + "/model").value();
  LoraSpec lora;
  ASSERT_TRUE(AttachLora(*small, lora).ok());
  const std::string adapter = dir_.path() + "/small-lora";
  ASSERT_TRUE(SaveAdapter(*small, lora, "small", adapter).ok());
  result = RunMerge(Spec(MergeMethod::kLinear, {adapter}), {});
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("input \"" + adapter + "\""),
            std::string::npos)
      << result.status();

  // A folder that is neither.
  result = RunMerge(Spec(MergeMethod::kLinear, {dir_.path()}), {});
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("neither"), std::string::npos);
}

TEST_F(MergeTest, ProgressReportsEveryTensorAndOutputHasTheBaseFiles) {
  const std::string a = WriteFineTune("a", 0.05, 1);
  MergeSpec spec = Spec(MergeMethod::kLinear, {a});
  std::vector<int64_t> done;
  int64_t total = 0;
  MergeHooks hooks;
  hooks.on_tensor = [&](int64_t i, int64_t n, const std::string&) {
    done.push_back(i);
    total = n;
  };
  absl::StatusOr<MergeResult> result = RunMerge(spec, hooks);
  ASSERT_TRUE(result.ok()) << result.status();
  const int64_t n = static_cast<int64_t>(BaseWeights().size());
  EXPECT_EQ(total, n);
  ASSERT_EQ(static_cast<int64_t>(done.size()), n);
  EXPECT_EQ(done.front(), 1);
  EXPECT_EQ(done.back(), n);
  EXPECT_EQ(result->tensors, n);
  for (const char* file :
       {"config.json", "tokenizer.model", "tokenizer_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(spec.output_dir + "/" + file)) << file;
  }
  // Refused: an output that is an input's folder.
  spec.output_dir = a;
  EXPECT_FALSE(RunMerge(spec, {}).ok());
}

// ---- Greedy soups.

TEST(GreedySoupTest, RejectsAnIngredientThatDoesNotStrictlyImprove) {
  // Scripted held-out losses by soup.
  const std::map<std::vector<int>, double> losses = {
      {{0}, 1.0}, {{1}, 0.9}, {{2}, 1.2}, {{1, 0}, 0.85}, {{1, 0, 2}, 0.85}};
  std::vector<SoupStep> steps;
  absl::StatusOr<std::vector<int>> soup = SelectGreedySoup(
      3,
      [&](const std::vector<int>& s) -> absl::StatusOr<double> {
        return losses.at(s);
      },
      [&](const SoupStep& step) { steps.push_back(step); });
  ASSERT_TRUE(soup.ok());
  EXPECT_EQ(*soup, (std::vector<int>{1, 0}));
  ASSERT_EQ(steps.size(), 6u);
  EXPECT_EQ(steps[3].input, 1);
  EXPECT_TRUE(steps[3].kept);
  EXPECT_EQ(steps[4].input, 0);
  EXPECT_TRUE(steps[4].kept);
  EXPECT_EQ(steps[4].soup_loss, 0.85);
  EXPECT_EQ(steps[5].input, 2);
  EXPECT_FALSE(steps[5].kept);  // 0.85 is not below 0.85
  EXPECT_EQ(steps[5].best_loss, 0.85);
  EXPECT_EQ(steps[5].soup_size, 2);
}

TEST_F(MergeTest, GreedySoupLeavesOutANoisyInput) {
  const std::string good1 = WriteFineTune("good1", 0.002, 1);
  const std::string noise = WriteFineTune("noise", 1.0, 2);
  const std::string good2 = WriteFineTune("good2", 0.002, 3);
  MergeSpec spec = Spec(MergeMethod::kGreedySoup, {good1, noise, good2});
  spec.soup.validation_file = demo_->path() + "/valid.jsonl";
  std::vector<SoupStep> steps;
  MergeHooks hooks;
  hooks.on_soup_step = [&](const SoupStep& s) { steps.push_back(s); };
  absl::StatusOr<MergeResult> result = RunMerge(spec, hooks);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(
      std::count(result->merged_inputs.begin(), result->merged_inputs.end(), 1),
      0);
  ASSERT_EQ(steps.size(), 6u);
  EXPECT_GT(steps[1].input_loss, steps[0].input_loss + 1);
  EXPECT_EQ(steps.back().input, 1);
  EXPECT_FALSE(steps.back().kept);
  // The written folder is the soup that was scored.
  std::unique_ptr<MergeBase> base = MergeBase::Open(BaseDir()).value();
  std::unique_ptr<ValidationScorer> scorer =
      ValidationScorer::Create(spec.soup, *base).value();
  ASSERT_TRUE(result->validation_loss.has_value());
  EXPECT_NEAR(scorer->Loss(LoadModelWeights(spec.output_dir).value()).value(),
              *result->validation_loss, 1e-9);
  // And its loss is one of a uniform soup of the kept inputs.
  MergeSpec uniform = Spec(MergeMethod::kLinear, {});
  for (int i : result->merged_inputs) uniform.inputs.push_back(spec.inputs[i]);
  EXPECT_NEAR(scorer->Loss(Merge(uniform)).value(), *result->validation_loss,
              1e-9);
}

TEST_F(MergeTest, GreedySoupNeedsAValidationFile) {
  MergeSpec spec = Spec(MergeMethod::kGreedySoup, {BaseDir()});
  absl::StatusOr<MergeResult> result = RunMerge(spec, {});
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("merge.soup.validation_file"),
            std::string::npos);
}

}  // namespace
}  // namespace lathe::engine
