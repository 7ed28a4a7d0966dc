#include "scheduler/memory_estimate.h"

#include <gtest/gtest.h>

#include <functional>
#include <vector>

namespace lathe::scheduler {
namespace {

ModelShape Llama3_8B() {
  return {.parameters = 8'030'261'248,
          .hidden_size = 4096,
          .num_layers = 32,
          .vocab_size = 128'256,
          .bytes_per_weight = 2};
}

TEST(MemoryEstimateTest, WorkedExampleLlama3_8BLora) {
  TrainShape train{.method = TrainMethod::kLora,
                   .lora_rank = 16,
                   .lora_matrices_per_layer = 4,
                   .batch_size = 4,
                   .sequence_length = 2048};
  // 2 * 16 * 4096 * 4 matrices * 32 layers.
  EXPECT_EQ(TrainableParameters(Llama3_8B(), train), 16'777'216);
  // weights      8'030'261'248 * 2           = 16'060'522'496
  // optimizer    16'777'216 * 16             =    268'435'456
  // activations  8192 tokens * 4096 * 32 * 34 = 36'507'222'016
  // logits       8192 * 128'256 * 8          =  8'405'385'216
  // overhead     1 GiB                       =  1'073'741'824
  EXPECT_EQ(EstimateMemoryBytes(Llama3_8B(), train), 62'315'307'008);
}

TEST(MemoryEstimateTest, WorkedExampleLlama3_8BFull) {
  TrainShape train{
      .method = TrainMethod::kFull, .batch_size = 4, .sequence_length = 2048};
  EXPECT_EQ(TrainableParameters(Llama3_8B(), train), 8'030'261'248);
  // As above with 8'030'261'248 * 16 = 128'484'179'968 for the optimizer.
  EXPECT_EQ(EstimateMemoryBytes(Llama3_8B(), train), 190'531'051'520);
}

TEST(MemoryEstimateTest, MonotoneInEveryField) {
  const ModelShape model = Llama3_8B();
  const TrainShape train{.batch_size = 2, .sequence_length = 1024};
  const int64_t base = EstimateMemoryBytes(model, train);
  const std::vector<std::function<void(ModelShape&, TrainShape&)>> growths = {
      [](ModelShape& m, TrainShape&) { m.parameters *= 2; },
      [](ModelShape& m, TrainShape&) { m.hidden_size *= 2; },
      [](ModelShape& m, TrainShape&) { m.num_layers *= 2; },
      [](ModelShape& m, TrainShape&) { m.vocab_size *= 2; },
      [](ModelShape& m, TrainShape&) { m.bytes_per_weight = 4; },
      [](ModelShape&, TrainShape& t) { t.lora_rank *= 2; },
      [](ModelShape&, TrainShape& t) { t.lora_matrices_per_layer = 7; },
      [](ModelShape&, TrainShape& t) { t.batch_size *= 2; },
      [](ModelShape&, TrainShape& t) { t.sequence_length *= 2; },
      [](ModelShape&, TrainShape& t) { t.method = TrainMethod::kFull; },
  };
  for (size_t i = 0; i < growths.size(); ++i) {
    ModelShape m = model;
    TrainShape t = train;
    growths[i](m, t);
    EXPECT_GT(EstimateMemoryBytes(m, t), base) << "growth " << i;
  }
}

TEST(MemoryEstimateTest, FullFineTuneIgnoresLoraSettings) {
  TrainShape a{.method = TrainMethod::kFull, .lora_rank = 8};
  TrainShape b{.method = TrainMethod::kFull, .lora_rank = 64};
  EXPECT_EQ(EstimateMemoryBytes(Llama3_8B(), a),
            EstimateMemoryBytes(Llama3_8B(), b));
}

TEST(MemoryEstimateTest, EmptyShapeIsTheOverhead) {
  EXPECT_EQ(EstimateMemoryBytes({}, {.lora_rank = 0, .batch_size = 0}),
            kMemoryOverheadBytes);
}

}  // namespace
}  // namespace lathe::scheduler
