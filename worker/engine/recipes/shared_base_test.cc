// Several LoRA runs in one process over one frozen copy of their base
// (model/shared_base.h): each run's numbers equal the same run alone.
#include "worker/engine/model/shared_base.h"

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/engine/adapters/lora.h"
#include "worker/engine/cli/demo.h"
#include "worker/engine/recipes/loop.h"
#include "worker/engine/recipes/run.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/recipes/recipe_test_util.h"
#include "worker/engine/test_util.h"
#include "worker/engine/text/json_file.h"

namespace lathe::engine {
namespace {

class SharedBaseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    demo_ = new testing::TempDir();
    ASSERT_TRUE(MakeDemo(demo_->path()).ok());
  }
  static void TearDownTestSuite() { delete demo_; }

  static RunSpec DemoSpec(const std::string& out) {
    return testing::DemoRunSpec(demo_->path(), out);
  }

  static testing::TempDir* demo_;
};
testing::TempDir* SharedBaseTest::demo_ = nullptr;

// A run's losses and outcome; `stop_after` > 0 asks for checkpoint-and-stop
// after that step. `on_step` runs on the run's thread after each step.
struct Outcome {
  absl::StatusOr<TrainResult> result = absl::UnknownError("not run");
  std::vector<double> losses;
};

Outcome RunOnce(const RunSpec& spec, int stop_after = 0,
                const std::function<void()>& on_step = nullptr) {
  Outcome outcome;
  int64_t done = 0;
  TrainHooks hooks;
  hooks.on_step = [&](const StepMetrics& m) {
    outcome.losses.push_back(m.loss);
    done = m.step;
    if (on_step) on_step();
  };
  hooks.should_stop = [&] {
    return stop_after > 0 && done >= stop_after
               ? StopRequest::kCheckpointAndStop
               : StopRequest::kNone;
  };
  outcome.result = Train(spec, hooks);
  return outcome;
}

TEST_F(SharedBaseTest, RunsOverOneBaseHoldOneCopyUntilTheLastLetsGo) {
  const std::string dir = demo_->path() + "/model";
  ASSERT_EQ(SharedBasesHeld(), 0);
  absl::StatusOr<std::shared_ptr<const SharedBase>> a =
      AcquireSharedBase(dir, torch::kCPU, torch::kFloat32);
  ASSERT_TRUE(a.ok()) << a.status();
  // The same folder by another spelling is the same base.
  absl::StatusOr<std::shared_ptr<const SharedBase>> b = AcquireSharedBase(
      demo_->path() + "/./model/", torch::kCPU, torch::kFloat32);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(SharedBasesHeld(), 1);
  // Its tensors are the folder's, frozen, and counted.
  absl::StatusOr<TensorMap> files = LoadModelWeights(dir);
  ASSERT_TRUE(files.ok());
  int64_t bytes = 0;
  for (const auto& [name, t] : *files) {
    ASSERT_TRUE((*a)->weights.contains(name)) << name;
    EXPECT_TRUE(torch::equal((*a)->weights.at(name), t)) << name;
    EXPECT_FALSE((*a)->weights.at(name).requires_grad()) << name;
    bytes += t.numel() * 4;
  }
  EXPECT_EQ((*a)->bytes, bytes);
  // Another storage dtype is another copy.
  absl::StatusOr<std::shared_ptr<const SharedBase>> half =
      AcquireSharedBase(dir, torch::kCPU, torch::kBFloat16);
  ASSERT_TRUE(half.ok());
  EXPECT_NE(half->get(), a->get());
  EXPECT_EQ((*half)->bytes, bytes / 2);
  EXPECT_EQ(SharedBasesHeld(), 2);
  half->reset();
  EXPECT_EQ(SharedBasesHeld(), 1);
  a->reset();
  b->reset();
  EXPECT_EQ(SharedBasesHeld(), 0);
  // A folder that is not a model is an error, and nothing is held.
  absl::StatusOr<std::shared_ptr<const SharedBase>> missing = AcquireSharedBase(
      demo_->path() + "/nothing", torch::kCPU, torch::kFloat32);
  EXPECT_FALSE(missing.ok());
  EXPECT_EQ(SharedBasesHeld(), 0);
}

TEST_F(SharedBaseTest, ModelsOfLoraRunsAreBuiltOverTheSharedTensors) {
  testing::TempDir out;
  RunSpec lora = DemoSpec(out.path() + "/a");
  absl::StatusOr<ModelSetup> first = SetUpModel(lora);
  ASSERT_TRUE(first.ok()) << first.status();
  lora.seed = 7;
  absl::StatusOr<ModelSetup> second = SetUpModel(lora);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_NE(first->base, nullptr);
  EXPECT_EQ(first->base, second->base);
  const TensorMap a = first->model->Weights(/*merge_lora=*/false);
  const TensorMap b = second->model->Weights(/*merge_lora=*/false);
  for (const auto& [name, t] : a) {
    EXPECT_EQ(t.data_ptr(), b.at(name).data_ptr()) << name;
    EXPECT_EQ(t.data_ptr(), first->base->weights.at(name).data_ptr()) << name;
  }
  // Each its own adapter (another seed: another initialization) and
  // generator.
  const Linear& qa = first->model->layers()[0].q_proj;
  const Linear& qb = second->model->layers()[0].q_proj;
  EXPECT_NE(qa.lora_a.data_ptr(), qb.lora_a.data_ptr());
  EXPECT_FALSE(torch::equal(qa.lora_a, qb.lora_a));
  ASSERT_TRUE(first->model->generator().defined());
  EXPECT_NE(first->model->generator().unsafeGetGeneratorImpl(),
            second->model->generator().unsafeGetGeneratorImpl());

  // Full fine-tuning trains the weights: a copy of its own.
  RunSpec full = DemoSpec(out.path() + "/full");
  full.adapter = FullSpec{};
  absl::StatusOr<ModelSetup> own = SetUpModel(full);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(own->base, nullptr);
  EXPECT_NE(own->model->layers()[0].q_proj.weight.data_ptr(),
            first->model->layers()[0].q_proj.weight.data_ptr());
}

// Three LoRA runs of one base at once, with other seeds (initialization,
// data order), learning rates, ranks and dropout (two draw masks, each from
// its own generator), one of them stopped at a checkpoint and resumed while
// the others train: every loss and every
// adapter equals the run's alone, and the process held one base all along.
TEST_F(SharedBaseTest, ThreeConcurrentLoraRunsEachEqualTheirSoloRun) {
  testing::TempDir out;
  std::vector<RunSpec> specs;
  for (int i = 0; i < 3; ++i) {
    RunSpec spec = DemoSpec(out.path() + absl::StrCat("/solo-", i));
    spec.seed = 100 + i;
    spec.schedule.n_epochs = 1;
    spec.optimizer.learning_rate *= 1 + i;
    Lora(spec.adapter)->rank = 4 << i;
    Lora(spec.adapter)->dropout = i == 0 ? 0.0 : 0.1;
    specs.push_back(spec);
  }
  std::vector<Outcome> solo;
  for (const RunSpec& spec : specs) {
    solo.push_back(RunOnce(spec));
    ASSERT_TRUE(solo.back().result.ok()) << solo.back().result.status();
  }
  ASSERT_EQ(SharedBasesHeld(), 0);

  std::mutex mu;
  std::condition_variable all_started;
  int started = 0;
  std::set<const SharedBase*> seen;
  int most_held = 0;
  // Each run's first step waits for the others' first steps, so that the
  // three train at the same time (their dropout draws interleaving, were
  // they from one generator).
  auto first_step = [&] {
    std::unique_lock<std::mutex> lock(mu);
    ++started;
    all_started.notify_all();
    all_started.wait_for(lock, std::chrono::seconds(60),
                         [&] { return started >= 3; });
  };
  auto observe = [&] {
    absl::StatusOr<std::shared_ptr<const SharedBase>> base = AcquireSharedBase(
        demo_->path() + "/model", torch::kCPU, torch::kFloat32);
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_TRUE(base.ok());
    seen.insert(base->get());
    most_held = std::max(most_held, SharedBasesHeld());
  };
  std::vector<Outcome> together(3);
  std::vector<Outcome> stopped(1);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      bool first = true;
      auto on_step = [&] {
        if (first) first_step();
        first = false;
        observe();
      };
      RunSpec spec = specs[i];
      spec.output.dir = out.path() + absl::StrCat("/together-", i);
      if (i == 2) {
        spec.checkpoint.dir = out.path() + "/ckpt-2";
        stopped[0] = RunOnce(spec, /*stop_after=*/7, on_step);
        if (stopped[0].result.status().code() != absl::StatusCode::kAborted)
          return;
        spec.checkpoint.resume_from = spec.checkpoint.dir + "/step-7";
      }
      together[i] = RunOnce(spec, 0, on_step);
    });
  }
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(stopped[0].result.status().code(), absl::StatusCode::kAborted)
      << stopped[0].result.status();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(together[i].result.ok())
        << i << ": " << together[i].result.status();
    std::vector<double> losses = together[i].losses;
    if (i == 2) {
      losses.insert(losses.begin(), stopped[0].losses.begin(),
                    stopped[0].losses.end());
    }
    ASSERT_EQ(losses.size(), solo[i].losses.size()) << i;
    for (size_t s = 0; s < losses.size(); ++s) {
      EXPECT_NEAR(losses[s], solo[i].losses[s], 1e-6)
          << "run " << i << " step " << s + 1;
    }
    EXPECT_LE(
        testing::MaxTensorDifference(out.path() + absl::StrCat("/solo-", i,
                                                "/adapter_model.safetensors"),
                      out.path() + absl::StrCat("/together-", i,
                                                "/adapter_model.safetensors")),
        1e-6)
        << i;
  }
  // The runs differ from each other (they are not one run three times).
  EXPECT_NE(solo[0].losses, solo[1].losses);
  EXPECT_EQ(seen.size(), 1u);
  EXPECT_EQ(started, 3);
  EXPECT_EQ(most_held, 1);
  EXPECT_EQ(SharedBasesHeld(), 0);
}

}  // namespace
}  // namespace lathe::engine
