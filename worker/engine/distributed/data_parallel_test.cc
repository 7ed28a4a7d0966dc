#include "worker/engine/distributed/data_parallel.h"

#include <torch/torch.h>

#include <functional>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/model/weights.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/recipes/recipe_test_util.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

using testing::TempDir;

TEST(DataParallelShardTest, EachRankTakesAContiguousShareFirstRanksTheExtra) {
  size_t first = 0, count = 0;
  // 10 over 4 ranks: 3, 3, 2, 2.
  const size_t want_first[] = {0, 3, 6, 8}, want_count[] = {3, 3, 2, 2};
  for (int r = 0; r < 4; ++r) {
    DataParallel::ShareOf(10, r, 4, &first, &count);
    EXPECT_EQ(first, want_first[r]) << r;
    EXPECT_EQ(count, want_count[r]) << r;
  }
  // Fewer examples than ranks: rank 0 is never the empty one.
  DataParallel::ShareOf(1, 0, 2, &first, &count);
  EXPECT_EQ(count, 1u);
  DataParallel::ShareOf(1, 1, 2, &first, &count);
  EXPECT_EQ(count, 0u);
}

// Runs `body(rank, group)` on `world` threads joined through one
// rendezvous on loopback; returns each rank's status.
std::vector<absl::Status> OnRanks(
    int world, const std::function<absl::Status(int, DataParallel&)>& body,
    absl::Duration timeout = absl::Seconds(30)) {
  absl::StatusOr<std::shared_ptr<Rendezvous>> host =
      Rendezvous::Host(0, world, timeout);
  EXPECT_TRUE(host.ok()) << host.status();
  if (!host.ok()) return {host.status()};
  const std::string address = absl::StrCat("127.0.0.1:", (*host)->port());
  std::vector<std::future<absl::Status>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r]() -> absl::Status {
      std::shared_ptr<Rendezvous> rv = *host;
      if (r > 0) {
        absl::StatusOr<std::shared_ptr<Rendezvous>> c =
            Rendezvous::Connect(address, timeout);
        if (!c.ok()) return c.status();
        rv = *c;
      }
      absl::StatusOr<std::unique_ptr<DataParallel>> dp = DataParallel::Join(
          rv, {.rank = r, .world_size = world, .gloo_host = "127.0.0.1",
               .timeout = timeout},
          torch::kCPU);
      if (!dp.ok()) return dp.status();
      return body(r, **dp);
    }));
  }
  std::vector<absl::Status> out;
  for (auto& f : ranks) out.push_back(f.get());
  return out;
}

TEST(DataParallelTest, GradientsAreTheWeightedMeanOfTheRanksShares) {
  // Rank r holds gradient g_r for its share of weight w_r: every rank ends
  // with sum_r w_r g_r / sum_r w_r, computed here by hand. The second
  // tensor has a gradient on rank 1 only (zeros elsewhere); the third on
  // none, and stays without one. Tiny buckets: one tensor per bucket.
  const double w[] = {3.0, 1.0};
  const std::vector<absl::Status> st = OnRanks(2, [&](int r, DataParallel& dp) {
    torch::Tensor a = torch::zeros({2, 3}, torch::requires_grad());
    torch::Tensor b = torch::zeros({4}, torch::requires_grad());
    torch::Tensor c = torch::zeros({1}, torch::requires_grad());
    a.mutable_grad() = torch::full({2, 3}, r == 0 ? 2.0f : 6.0f);
    if (r == 1) b.mutable_grad() = torch::arange(4, torch::kFloat32);
    absl::StatusOr<double> total = dp.AllReduceGradients({a, b, c}, w[r], 8);
    if (!total.ok()) return total.status();
    EXPECT_DOUBLE_EQ(*total, 4.0);
    // (3·2 + 1·6) / 4 = 3; b: (1·[0 1 2 3]) / 4.
    EXPECT_TRUE(torch::allclose(a.grad(), torch::full({2, 3}, 3.0f)));
    EXPECT_TRUE(torch::allclose(b.grad(), torch::arange(4, torch::kFloat32) / 4));
    EXPECT_FALSE(c.grad().defined());
    // Figures: rank 1's share is empty (no names): rank 0's names are used.
    std::map<std::string, double> values;
    if (r == 0) values = {{"margin", 2.0}, {"rewards", -1.0}};
    absl::StatusOr<std::map<std::string, double>> means =
        dp.WeightedMeans(values, r == 0 ? 3.0 : 0.0, 3.0);
    if (!means.ok()) return means.status();
    EXPECT_EQ(means->size(), 2u);
    EXPECT_DOUBLE_EQ(means->at("margin"), 2.0);
    EXPECT_DOUBLE_EQ(means->at("rewards"), -1.0);
    absl::StatusOr<int64_t> max = dp.Max(r == 0 ? 1 : 2);
    if (!max.ok()) return max.status();
    EXPECT_EQ(*max, 2);
    return absl::OkStatus();
  });
  for (const absl::Status& s : st) EXPECT_TRUE(s.ok()) << s;
}

TEST(DataParallelTest, ALostRankFailsTheOthersCollectiveAsUnavailable) {
  const std::vector<absl::Status> st = OnRanks(
      2,
      [&](int r, DataParallel& dp) -> absl::Status {
        if (r == 1) return absl::OkStatus();  // leaves: its group is closed
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        return dp.Max(0).status();
      },
      absl::Seconds(10));
  ASSERT_EQ(st.size(), 2u);
  EXPECT_TRUE(st[1].ok());
  EXPECT_TRUE(absl::IsUnavailable(st[0])) << st[0];
  EXPECT_NE(st[0].message().find("rank 0"), std::string::npos) << st[0];
}

TEST(DataParallelTest, RendezvousAddressesAreChecked) {
  for (const char* bad : {"nohost", ":", "host:0", "host:99999", "host:x"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(
        Rendezvous::Connect(bad, absl::Seconds(1)).status()))
        << bad;
  }
}

class DataParallelTrainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  static RunSpec Spec(const std::string& out) {
    RunSpec spec = testing::DemoRunSpec(demo_->path(), out + "/adapter");
    spec.checkpoint.dir = out + "/checkpoints";
    spec.checkpoint.every_steps = 5;
    spec.schedule.n_epochs = 1;
    // A batch that does not divide by the ranks (7 over 2: 4 and 3), and
    // an epoch whose last step is smaller (80 examples: 11 x 7 + 3).
    spec.data.batch_size = 7;
    if (auto* lora = std::get_if<LoraSpec>(&spec.adapter)) lora->dropout = 0;
    return spec;
  }

  static TempDir* demo_;
};
TempDir* DataParallelTrainTest::demo_ = nullptr;

TEST_F(DataParallelTrainTest, TwoRanksEqualOneWorkerAtTheWholeBatch) {
  TempDir out;
  // One worker: the reference (each step's loss and gradient norm).
  const RunSpec one = Spec(out.path() + "/one");
  std::vector<StepMetrics> solo;
  absl::StatusOr<TrainResult> reference =
      Train(one, {.on_step = [&](const StepMetrics& m) { solo.push_back(m); }});
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_GE(solo.size(), 8u);

  std::vector<std::vector<StepMetrics>> steps(2);
  std::vector<int> checkpoints(2, 0);
  const std::vector<absl::Status> st = OnRanks(2, [&](int r, DataParallel& dp) {
    const RunSpec spec = Spec(absl::StrCat(out.path(), "/rank", r));
    TrainHooks hooks;
    hooks.on_step = [&, r](const StepMetrics& m) { steps[r].push_back(m); };
    hooks.on_checkpoint = [&, r](const CheckpointInfo&) { ++checkpoints[r]; };
    hooks.data_parallel = &dp;
    absl::StatusOr<TrainResult> result = Train(spec, hooks);
    if (!result.ok()) return result.status();
    EXPECT_EQ(result->trained_tokens, reference->trained_tokens) << r;
    return absl::OkStatus();
  });
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(steps[r].size(), solo.size()) << r;
    for (size_t i = 0; i < solo.size(); ++i) {
      // Both ranks see the whole step's figures.
      EXPECT_NEAR(steps[r][i].loss, solo[i].loss, 1e-4) << r << " step " << i;
      EXPECT_NEAR(steps[r][i].grad_norm, solo[i].grad_norm, 1e-3) << r << " " << i;
      EXPECT_NEAR(steps[r][i].token_accuracy, solo[i].token_accuracy, 1e-6);
    }
  }
  // Rank 0 alone writes checkpoints and the adapter, equal to one worker's.
  EXPECT_EQ(checkpoints[0], static_cast<int>(solo.size() / 5));
  EXPECT_EQ(checkpoints[1], 0);
  EXPECT_FALSE(std::filesystem::exists(out.path() + "/rank1/adapter/adapter_model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(out.path() + "/rank1/checkpoints"));
  EXPECT_LE(testing::MaxTensorDifference(out.path() + "/one/adapter/adapter_model.safetensors",
                          out.path() + "/rank0/adapter/adapter_model.safetensors"),
            1e-5);
}

TEST_F(DataParallelTrainTest, APauseOnOneRankStopsBothAtTheSameStep) {
  TempDir out;
  std::vector<int64_t> last(2, 0);
  std::vector<int> checkpoints(2, 0);
  const std::vector<absl::Status> st = OnRanks(2, [&](int r, DataParallel& dp) {
    const RunSpec spec = Spec(absl::StrCat(out.path(), "/rank", r));
    TrainHooks hooks;
    hooks.on_step = [&, r](const StepMetrics& m) { last[r] = m.step; };
    hooks.on_checkpoint = [&, r](const CheckpointInfo&) { ++checkpoints[r]; };
    // Only rank 1 is asked to pause, after its third step.
    hooks.should_stop = [&, r] {
      return r == 1 && last[r] >= 3 ? StopRequest::kCheckpointAndStop
                                    : StopRequest::kNone;
    };
    hooks.data_parallel = &dp;
    return Train(spec, hooks).status();
  });
  for (const absl::Status& s : st) {
    EXPECT_TRUE(absl::IsAborted(s)) << s;
  }
  EXPECT_EQ(last[0], 3);
  EXPECT_EQ(last[1], 3);
  EXPECT_EQ(checkpoints[0], 1);  // rank 0 writes the pause's checkpoint
  EXPECT_EQ(checkpoints[1], 0);
  EXPECT_TRUE(std::filesystem::exists(out.path() + "/rank0/checkpoints/step-3"));
}

}  // namespace
}  // namespace lathe::engine
