#include "worker/engine/model/activation_checkpoint.h"

#include <mutex>

#include "gtest/gtest.h"
#include "worker/engine/data/batch.h"
#include "worker/engine/data/packing.h"
#include "worker/engine/model/random_model_test_util.h"

namespace lathe::engine {
namespace {

using testing::Trainable;

torch::Tensor GeneratorState() {
  at::Generator generator = at::globalContext().defaultGenerator(torch::kCPU);
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

struct Outcome {
  double loss = 0;
  TensorMap grads;
  torch::Tensor rng_after;  // the generator after forward and backward
};

// One training forward + backward (dropout on) from the same generator
// state, with or without checkpointing.
Outcome Run(const LlamaModel& model, Trainable trainable, bool checkpoint) {
  std::vector<Example> examples(3);
  for (int e = 0; e < 3; ++e) {
    for (int t = 0; t < 6 + 3 * e; ++t) {
      examples[e].ids.push_back((7 * t + 11 * e + 1) % 50);
      examples[e].loss_mask.push_back(t >= 2);
    }
  }
  const Batch batch = PackBatch(examples, {0, 1, 2});
  torch::manual_seed(5);
  LossStats stats = CausalLmLoss(
      torch::linear(
          model.Hidden(batch.input_ids, batch.layout,
                       {.training = true, .checkpoint_layers = checkpoint}),
          model.head()),
      batch);
  stats.loss.backward();
  return {stats.loss.item<double>(), testing::TakeGrads(model, trainable),
          GeneratorState()};
}

void ExpectCheckpointingChangesNothing(Trainable trainable, double dropout) {
  std::unique_ptr<LlamaModel> model =
      testing::RandomModel(testing::TinyConfig(), trainable, dropout);
  const Outcome want = Run(*model, trainable, false);
  const Outcome got = Run(*model, trainable, true);
  EXPECT_NEAR(got.loss, want.loss, 1e-6 * std::abs(want.loss));
  testing::ExpectSameGrads(got.grads, want.grads, 1e-5, 1e-6);
  // The recompute gave the generator back: later draws are unchanged.
  EXPECT_TRUE(torch::equal(got.rng_after, want.rng_after));
}

TEST(ActivationCheckpointTest, LoraGradientsEqualWithoutIt) {
  ExpectCheckpointingChangesNothing(Trainable::kLora, 0);
}

TEST(ActivationCheckpointTest, LoraGradientsEqualWithDropout) {
  ExpectCheckpointingChangesNothing(Trainable::kLora, 0.3);
}

TEST(ActivationCheckpointTest, GradientsOfEveryWeightEqualWithoutIt) {
  ExpectCheckpointingChangesNothing(Trainable::kAll, 0);
}

TEST(ActivationCheckpointTest, KeepsOnlyTheInput) {
  // fn = (x * w).sin(): without checkpointing autograd keeps x * w for the
  // sin's backward; with it, only x. The gradient is the same.
  const torch::Tensor w = torch::full({4}, 2.0).requires_grad_(true);
  auto fn = [&](const torch::Tensor& x) { return (x * w).sin(); };
  const torch::Tensor x = torch::linspace(0, 1, 4).requires_grad_(true);
  Checkpointed(fn, x).sum().backward();
  const torch::Tensor checkpointed_x = x.grad().clone();
  const torch::Tensor checkpointed_w = w.grad().clone();
  x.mutable_grad() = torch::Tensor();
  w.mutable_grad() = torch::Tensor();
  fn(x).sum().backward();
  EXPECT_TRUE(torch::allclose(checkpointed_x, x.grad()));
  EXPECT_TRUE(torch::allclose(checkpointed_w, w.grad()));
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(Checkpointed(fn, x).requires_grad());
  }
}

}  // namespace
}  // namespace lathe::engine
