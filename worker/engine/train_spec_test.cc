#include "worker/engine/train_spec.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

TEST(TrainSpecTest, ParsesFieldsAndResolvesRelativePaths) {
  absl::StatusOr<TrainOptions> o = ParseTrainSpec(
      Json{{"model_dir", "model"},
           {"training_file", "/data/train.jsonl"},
           {"output_dir", "out"},
           {"n_epochs", 2},
           {"learning_rate", 1e-3},
           {"seed", 7},
           {"lora", {{"rank", 4}, {"target_modules", {"q_proj", "v_proj"}}}}},
      "/base");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_dir, "/base/model");
  EXPECT_EQ(o->training_file, "/data/train.jsonl");
  EXPECT_EQ(o->output_dir, "/base/out");
  EXPECT_EQ(o->validation_file, "");
  EXPECT_EQ(o->n_epochs, 2);
  EXPECT_EQ(o->batch_size, 4);  // default kept
  EXPECT_TRUE(o->packing);
  EXPECT_FALSE(o->activation_checkpointing);
  EXPECT_EQ(o->loss_chunk_tokens, 1024);
  EXPECT_DOUBLE_EQ(o->learning_rate, 1e-3);
  EXPECT_EQ(o->seed, 7u);
  EXPECT_EQ(o->lora.rank, 4);
  EXPECT_EQ(o->lora.target_modules,
            (std::vector<std::string>{"q_proj", "v_proj"}));
}

TEST(TrainSpecTest, RoundTripsThroughJson) {
  TrainOptions options;
  options.model_dir = "/m";
  options.learning_rate = 5e-4;
  options.lora.dropout = 0.1;
  options.lora.use_rslora = true;
  options.method = "full";
  options.gradient_accumulation_steps = 4;
  options.lr_scheduler = "cosine";
  options.weight_decay = 0.01;
  options.eval_every = 10;
  options.checkpoint_every = 50;
  options.checkpoint_dir = "/ckpt";
  options.resume_from = "/ckpt/step-50";
  options.merge_output_dir = "/merged";
  options.training_file_name = "training_file file-abc";
  options.validation_file_name = "validation_file file-xyz";
  options.packing = false;
  options.activation_checkpointing = true;
  options.loss_chunk_tokens = 77;
  absl::StatusOr<TrainOptions> back =
      ParseTrainSpec(TrainSpecJson(options), "/");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(TrainSpecJson(*back), TrainSpecJson(options));
}

TEST(TrainSpecTest, ParsesTrainingControlsAndResolvesTheirPaths) {
  absl::StatusOr<TrainOptions> o =
      ParseTrainSpec(Json{{"method", "full"},
                          {"gradient_accumulation_steps", 2},
                          {"lr_scheduler", "cosine"},
                          {"weight_decay", 0.1},
                          {"eval_every", 5},
                          {"checkpoint_every", 20},
                          {"checkpoint_dir", "ckpt"},
                          {"resume_from", "ckpt/step-20"},
                          {"merge_output_dir", "merged"},
                          {"lora", {{"use_rslora", true}}}},
                     "/base");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->method, "full");
  EXPECT_EQ(o->gradient_accumulation_steps, 2);
  EXPECT_EQ(o->lr_scheduler, "cosine");
  EXPECT_DOUBLE_EQ(o->weight_decay, 0.1);
  EXPECT_EQ(o->eval_every, 5);
  EXPECT_EQ(o->checkpoint_every, 20);
  EXPECT_EQ(o->checkpoint_dir, "/base/ckpt");
  EXPECT_EQ(o->resume_from, "/base/ckpt/step-20");
  EXPECT_EQ(o->merge_output_dir, "/base/merged");
  EXPECT_TRUE(o->lora.use_rslora);
}

TEST(TrainSpecTest, RejectsUnknownFieldsAndWrongTypes) {
  for (const Json& spec :
       {Json{{"packing", 1}}, Json{{"activation_checkpointing", "no"}},
        Json{{"loss_chunk_tokens", 1.5}}}) {
    absl::Status status = ParseTrainSpec(spec, "/").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("\"" + spec.begin().key() + "\""),
              std::string::npos)
        << status;
  }
  EXPECT_NE(ParseTrainSpec(Json{{"epochs", 3}}, "/")
                .status()
                .message()
                .find("\"epochs\""),
            std::string::npos);
  EXPECT_NE(ParseTrainSpec(Json{{"lora", {{"r", 3}}}}, "/")
                .status()
                .message()
                .find("\"lora.r\""),
            std::string::npos);
  EXPECT_NE(ParseTrainSpec(Json{{"batch_size", "4"}}, "/")
                .status()
                .message()
                .find("\"batch_size\""),
            std::string::npos);
  EXPECT_NE(ParseTrainSpec(Json{{"seed", -1}}, "/")
                .status()
                .message()
                .find("\"seed\""),
            std::string::npos);
  EXPECT_NE(ParseTrainSpec(Json{{"lora", {{"use_rslora", 1}}}}, "/")
                .status()
                .message()
                .find("\"use_rslora\""),
            std::string::npos);
  EXPECT_EQ(ParseTrainSpec(Json::array(), "/").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lathe::engine
