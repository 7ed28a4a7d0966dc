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

// Llama-3-8B's layer: q, o 4096 x 4096; k, v 1024 x 4096; gate, up, down
// 14336 x 4096; two norms of 4096.
ModelShape Llama3_8BLayers() {
  ModelShape m = Llama3_8B();
  m.intermediate_size = 14336;
  m.attention_size = 4096;
  m.kv_size = 1024;
  return m;
}

// LISA's gamma layers and the ends; the weights stay whole.
TEST(MemoryEstimateTest, WorkedExampleLlama3_8BLisa) {
  TrainShape train{.method = TrainMethod::kFull,
                   .batch_size = 4,
                   .sequence_length = 2048,
                   .part = TrainedPart{.ends = true, .whole_layers = 2}};
  // ends   128'256 * 4096 * 2 + 4096                     =  1'050'677'248
  // layer  (8'030'261'248 - 1'050'677'248) / 32          =    218'112'000
  //        (= 2 * 4096² + 2 * 1024 * 4096 + 3 * 14336 * 4096 + 2 * 4096)
  // LISA   1'050'677'248 + 2 * 218'112'000               =  1'486'901'248
  EXPECT_EQ(TrainableParameters(Llama3_8BLayers(), train), 1'486'901'248);
  // weights      8'030'261'248 * 2           = 16'060'522'496
  // optimizer    1'486'901'248 * 16          = 23'790'419'968
  // activations, logits, overhead as in the LoRA example
  //                                            45'986'349'056
  EXPECT_EQ(EstimateMemoryBytes(Llama3_8BLayers(), train), 85'837'291'520);
  // A tied head is in the embeddings: ends 128'256 * 4096 + 4096 =
  // 525'340'672, layer (8'030'261'248 - 525'340'672) / 32 = 234'528'768.
  ModelShape tied = Llama3_8BLayers();
  tied.tied_embeddings = true;
  EXPECT_EQ(TrainableParameters(tied, train), 525'340'672 + 2 * 234'528'768);
}

TEST(MemoryEstimateTest, MatrixPartsCountTheirShapes) {
  TrainShape train{.method = TrainMethod::kFull};
  // HFT at 0.5 on 32 layers: 64 attention matrices, at worst all q and o
  // (64 * 4096²), and 112 - 64 = 48 MLP ones (48 * 14336 * 4096).
  train.part = TrainedPart{.q_o_matrices = 64, .mlp_matrices = 48};
  EXPECT_EQ(TrainableParameters(Llama3_8BLayers(), train),
            1'073'741'824 + 2'818'572'288);
  train.part->ends = true;
  EXPECT_EQ(TrainableParameters(Llama3_8BLayers(), train),
            1'073'741'824 + 2'818'572'288 + 1'050'677'248);
  // Each kind at its size: 2 k/v matrices, 16 MLP ones, 8 norms.
  train.part = TrainedPart{.k_v_matrices = 2, .mlp_matrices = 16, .norms = 8};
  EXPECT_EQ(TrainableParameters(Llama3_8BLayers(), train),
            2 * 1024 * 4096 + 16 * 14336 * 4096 + 8 * 4096);
  // Without the layer shapes, a part is estimated as the whole model.
  EXPECT_EQ(TrainableParameters(Llama3_8B(), train), 8'030'261'248);
  // Never more than the model.
  train.part = TrainedPart{.ends = true, .whole_layers = 40};
  EXPECT_EQ(TrainableParameters(Llama3_8BLayers(), train), 8'030'261'248);
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

TEST(MemoryEstimateTest, LoraSharesExactlyTheBaseWeights) {
  const TrainShape train{.method = TrainMethod::kLora,
                         .lora_rank = 16,
                         .lora_matrices_per_layer = 4,
                         .batch_size = 4,
                         .sequence_length = 2048};
  // The weights term of the worked example: 8'030'261'248 * 2.
  EXPECT_EQ(SharedBaseBytes(Llama3_8B(), train), 16'060'522'496);
  // Each job beside the first on the same base costs the rest of its
  // estimate: optimizer + activations + logits + overhead.
  EXPECT_EQ(EstimateMemoryBytes(Llama3_8B(), train) -
                SharedBaseBytes(Llama3_8B(), train),
            268'435'456 + 36'507'222'016 + 8'405'385'216 + 1'073'741'824);
  // It follows the weights alone: fp32 weights share twice as much, and a
  // bigger adapter or batch shares nothing more.
  ModelShape fp32 = Llama3_8B();
  fp32.bytes_per_weight = 4;
  EXPECT_EQ(SharedBaseBytes(fp32, train), 2 * 16'060'522'496);
  TrainShape bigger = train;
  bigger.lora_rank = 64;
  bigger.batch_size = 8;
  EXPECT_EQ(SharedBaseBytes(Llama3_8B(), bigger), 16'060'522'496);
}

TEST(MemoryEstimateTest, FullFineTuneSharesNothing) {
  TrainShape full{.method = TrainMethod::kFull};
  EXPECT_EQ(SharedBaseBytes(Llama3_8B(), full), 0);
  // Nor with a trained part: what it trains moves away from the base, so
  // the copy it holds is its own.
  full.part = TrainedPart{.ends = true, .whole_layers = 2};
  EXPECT_EQ(SharedBaseBytes(Llama3_8BLayers(), full), 0);
}

TEST(MemoryEstimateTest, EmptyShapeIsTheOverhead) {
  EXPECT_EQ(EstimateMemoryBytes({}, {.lora_rank = 0, .batch_size = 0}),
            kMemoryOverheadBytes);
}

}  // namespace
}  // namespace lathe::scheduler
