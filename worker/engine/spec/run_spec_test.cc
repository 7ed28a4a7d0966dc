#include "worker/engine/spec/run_spec.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace lathe::engine {
namespace {

using Json = nlohmann::json;

// A spec with every field away from its default.
RunSpec EveryFieldSet() {
  RunSpec s;
  s.seed = 7;
  s.model = {.dir = "/m", .base_model_name = "org/m", .chat_template = "chatml"};
  s.data = {.training_file = "/t.jsonl",
            .validation_file = "/v.jsonl",
            .training_file_name = "training_file file-abc",
            .validation_file_name = "validation_file file-xyz",
            .batch_size = 3,
            .max_seq_len = 99,
            .packing = false,
            // Sources are in MixtureSpecIsNestedObjects: with them,
            // training_file must be empty.
            .mixture = {.strategy = "weighted"}};
            // Stages are in StagesAreNestedObjects: with them, training_file
            // must be empty.
  s.adapter = LoraSpec{.rank = 5,
                       .alpha = 3.5,
                       .dropout = 0.1,
                       .use_rslora = true,
                       .target_modules = {"up_proj", "q_proj"},
                       .use_dora = true,
                       .layers_to_transform = {0, 1}};
  // A mask rate (on) is in MixtureSpecIsNestedObjects: it adds a resume key.
  s.objective = SftSpec{.loss_chunk_tokens = 77,
                        .masked_thought = {.schedule = "constant"}};
  s.optimizer = {.learning_rate = 5e-4,
                 .weight_decay = 0.01,
                 .max_grad_norm = 0.5,
                 .gradient_accumulation_steps = 4};
  s.schedule = {.n_epochs = 2, .warmup_steps = 3, .lr_scheduler = "cosine"};
  s.checkpoint = {.every_steps = 50,
                  .dir = "/ckpt",
                  .resume_from = "/ckpt/s",
                  .at_end = true};
  s.device = {.device = "cuda:1",
              .dtype = "bfloat16",
              .activation_checkpointing = true};
  s.evaluation = {.every_steps = 10,
                  .general_file = "/general.jsonl",
                  .general_file_name = "general_file file-g",
                  .general_tokens = "all",
                  .intruder_top_k = 5,
                  .intruder_epsilon = 0.25};
  s.output = {.dir = "/out", .merged_dir = "/merged"};
  return s;
}

// Every field of the self_training section away from its default (apart:
// a run with them takes no stages or mixture).
SelfTrainingSpec EverySelfTrainingFieldSet() {
  return {.iterations = 2,
          .samples_per_prompt = 8,
          .temperature = 1.0,
          .top_p = 0.9,
          .max_new_tokens = 64,
          .answer_extractor = "regex",
          .answer_pattern = "answer: (\\d+)",
          .dedupe = "exact",
          .include_gold = false,
          .init = "base",
          .accumulate_previous = false};
}

// Every field of the trainable section away from its default (not a valid
// selection: it combines all three kinds).
TrainableSpec EveryTrainableFieldSet() {
  return {.layers = {"1-2"},
          .modules = {"up_proj"},
          .lisa = LisaSpec{.activated_layers = 1, .interval_steps = 5},
          .half_ft = HalfFtSpec{.reselect = "epoch",
                                .seed = 3,
                                .fraction = 0.25,
                                .include_embeddings = true}};
}

// Each section's JSON reads back as the section, field for field.
template <typename S>
void ExpectRoundTrip(const S& section) {
  S back;
  ASSERT_TRUE(FromJson(ToJson(section), &back).ok());
  EXPECT_EQ(ToJson(back), ToJson(section));
}

TEST(RunSpecTest, EverySectionRoundTripsThroughJson) {
  const RunSpec s = [] {
    RunSpec s = EveryFieldSet();
    s.self_training = EverySelfTrainingFieldSet();
    // Not with EveryFieldSet's DoRA (refused), but it round-trips.
    s.evaluation.intruder_mitigation_lambda = 0.75;
    return s;
  }();
  ExpectRoundTrip(s.model);
  ExpectRoundTrip(s.data);
  ExpectRoundTrip(s.adapter);
  ExpectRoundTrip(AdapterSpec(FullSpec{}));
  ExpectRoundTrip(AdapterSpec(S2ftSpec{
      .d_ratio = 0.02, .u_ratio = 0.01, .o_ratio = 0.052, .v_ratio = 0.1, .seed = 7}));
  ExpectRoundTrip(EveryTrainableFieldSet());
  ExpectRoundTrip(TrainableSpec{});
  ExpectRoundTrip(s.objective);
  // The preference objectives, every field away from its default.
  const DpoSpec dpo{.beta = 0.3,
                    .loss_type = "robust",
                    .label_smoothing = 0.2,
                    .rpo_alpha = 1.5,
                    .max_prompt_len = 40,
                    .loss_chunk_tokens = 64,
                    .reference = "precomputed"};
  const OrpoSpec orpo{.lambda = 0.5, .max_prompt_len = 30,
                      .loss_chunk_tokens = 32};
  ExpectRoundTrip(ObjectiveSpec(dpo));
  ExpectRoundTrip(ObjectiveSpec(orpo));
  for (const Json& json : {ToJson(ObjectiveSpec(dpo)),
                           ToJson(ObjectiveSpec(orpo))}) {
    const std::string type = json["type"];
    const Json defaults =
        ToJson(type == "dpo" ? ObjectiveSpec(DpoSpec{}) : OrpoSpec{});
    for (const auto& [name, value] : json.items()) {
      if (name != "type") EXPECT_NE(value, defaults[name]) << type << name;
    }
  }
  EXPECT_EQ(HyperparametersField(ObjectiveSpec(dpo)),
            "method.dpo.hyperparameters");
  EXPECT_EQ(HyperparametersField(SftSpec{}),
            "method.supervised.hyperparameters");
  ExpectRoundTrip(s.optimizer);
  ExpectRoundTrip(s.schedule);
  ExpectRoundTrip(s.checkpoint);
  ExpectRoundTrip(s.device);
  ExpectRoundTrip(s.evaluation);
  ExpectRoundTrip(s.self_training);
  ExpectRoundTrip(s.output);

  absl::StatusOr<RunSpec> back = ParseRunSpec(RunSpecJson(s), "/");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(RunSpecJson(*back), RunSpecJson(s));
  // Every field of the sections is in the JSON, away from the default: a
  // field added to a struct and not to its field list fails here.
  const Json json = RunSpecJson(s), defaults = RunSpecJson(RunSpec{});
  for (const auto& [section, fields] : json.items()) {
    // A LoRA run selects no trainable tensors: that section is checked on
    // its own below.
    if (!fields.is_object() || section == "trainable") continue;
    for (const auto& [name, value] : fields.items()) {
      if (name == "type" || (section == "data" && name == "stages")) continue;
      EXPECT_NE(value, defaults[section][name]) << section << "." << name;
    }
  }
  EXPECT_EQ(ToJson(s.adapter)["type"], "lora");
  EXPECT_EQ(ToJson(AdapterSpec(FullSpec{})), (Json{{"type", "full"}}));
  EXPECT_EQ(ToJson(s.objective)["type"], "sft");
  const Json trainable = ToJson(EveryTrainableFieldSet());
  const Json no_selection = ToJson(TrainableSpec{});
  for (const auto& [name, value] : trainable.items()) {
    EXPECT_NE(value, no_selection[name]) << "trainable." << name;
  }
  EXPECT_EQ(no_selection["lisa"], nullptr);
  const Json half_defaults =
      ToJson(TrainableSpec{.half_ft = HalfFtSpec{}})["half_ft"];
  for (const auto& [name, value] : trainable["half_ft"].items()) {
    EXPECT_NE(value, half_defaults[name]) << "trainable.half_ft." << name;
  }
  EXPECT_EQ(half_defaults["fraction"], 0.5);
  EXPECT_EQ(half_defaults["include_embeddings"], false);
  TrainableSpec lisa;
  ASSERT_TRUE(FromJson(Json{{"lisa", Json::object()}}, &lisa).ok());
  ASSERT_TRUE(lisa.lisa.has_value());
  EXPECT_EQ(lisa.lisa->activated_layers, 2);  // LMFlow's defaults
  EXPECT_EQ(lisa.lisa->interval_steps, 20);
}

TEST(RunSpecTest, AbsentSectionsAndFieldsKeepDefaultsAndPathsResolve) {
  absl::StatusOr<RunSpec> s = ParseRunSpec(
      Json{{"model", {{"dir", "model"}}},
           {"data", {{"training_file", "/data/train.jsonl"}}},
           {"adapter", {{"rank", 4}, {"target_modules", {"q_proj"}}}},
           {"checkpoint", {{"dir", "ckpt"}, {"resume_from", "ckpt/step-2"}}},
           {"output", {{"dir", "out"}, {"merged_dir", "merged"}}},
           {"seed", 9}},
      "/base");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->model.dir, "/base/model");
  EXPECT_EQ(s->data.training_file, "/data/train.jsonl");
  EXPECT_EQ(s->data.validation_file, "");
  EXPECT_EQ(s->checkpoint.dir, "/base/ckpt");
  EXPECT_EQ(s->checkpoint.resume_from, "/base/ckpt/step-2");
  EXPECT_EQ(s->output.dir, "/base/out");
  EXPECT_EQ(s->output.merged_dir, "/base/merged");
  EXPECT_EQ(s->seed, 9u);
  ASSERT_NE(Lora(s->adapter), nullptr);  // "type" defaults to lora
  EXPECT_EQ(Lora(s->adapter)->rank, 4);
  EXPECT_DOUBLE_EQ(Lora(s->adapter)->alpha, 16.0);
  EXPECT_EQ(s->data.batch_size, 4);
  EXPECT_TRUE(s->data.packing);
  EXPECT_EQ(std::get<SftSpec>(s->objective).loss_chunk_tokens, 1024);
  EXPECT_EQ(s->device.device, "auto");
  EXPECT_TRUE(ValidateRunSpec(*s).ok()) << ValidateRunSpec(*s);
}

absl::Status ParseError(const Json& json) {
  return ParseRunSpec(json, "/").status();
}

TEST(RunSpecTest, ReadingErrorsNameTheField) {
  const std::pair<Json, std::string> cases[] = {
      {Json{{"data", {{"packing", 1}}}}, "\"data.packing\""},
      {Json{{"device", {{"activation_checkpointing", "no"}}}},
       "\"device.activation_checkpointing\""},
      {Json{{"objective", {{"loss_chunk_tokens", 1.5}}}},
       "\"objective.loss_chunk_tokens\""},
      {Json{{"data", {{"batch_size", "4"}}}}, "\"data.batch_size\""},
      {Json{{"data", {{"batch_size", 1e12}}}}, "\"data.batch_size\""},
      {Json{{"data", {{"max_seq_len", 5000000000}}}}, "\"data.max_seq_len\""},
      {Json{{"seed", -1}}, "\"seed\""},
      {Json{{"adapter", {{"r", 3}}}}, "\"adapter.r\""},
      {Json{{"adapter", {{"type", "full"}, {"rank", 3}}}}, "\"adapter.rank\""},
      {Json{{"adapter", {{"type", "dora"}}}}, "\"adapter.type\""},
      {Json{{"adapter", {{"use_rslora", 1}}}}, "\"adapter.use_rslora\""},
      {Json{{"objective", {{"type", "kto"}}}}, "\"objective.type\""},
      {Json{{"objective", {{"type", "orpo"}, {"beta", 0.1}}}},
       "\"objective.beta\""},
      {Json{{"adapter", {{"layers_to_transform", {0, "1"}}}}},
       "\"adapter.layers_to_transform\""},
      {Json{{"trainable", {{"lisa", 2}}}}, "\"trainable.lisa\""},
      {Json{{"trainable", {{"lisa", {{"gamma", 2}}}}}},
       "\"trainable.lisa.gamma\""},
      {Json{{"trainable", {{"half_ft", {{"seed", -3}}}}}},
       "\"trainable.half_ft.seed\""},
      {Json{{"schedule", 3}}, "\"schedule\""},
      {Json{{"epochs", 3}}, "\"epochs\""},
      // The flat layout's fields say where they went.
      {Json{{"n_epochs", 3}}, "schedule.n_epochs"},
      {Json{{"lora", Json::object()}}, "adapter"},
      {Json{{"merge_output_dir", "m"}}, "output.merged_dir"},
  };
  for (const auto& [json, field] : cases) {
    const absl::Status status = ParseError(json);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_NE(status.message().find(field), std::string::npos)
        << json << ": " << status;
  }
  EXPECT_EQ(ParseError(Json::array()).code(),
            absl::StatusCode::kInvalidArgument);
}

// EveryFieldSet as a full fine-tuning run (which has no merged model).
void FullFineTuning(RunSpec& s) {
  s.adapter = FullSpec{};
  s.output.merged_dir.clear();
}

TEST(RunSpecTest, EachSectionsValidationNamesTheField) {
  struct Case {
    void (*change)(RunSpec&);
    std::string field;
  };
  const Case cases[] = {
      {[](RunSpec& s) { s.model.dir.clear(); }, "model.dir"},
      {[](RunSpec& s) { s.data.training_file.clear(); }, "data.training_file"},
      {[](RunSpec& s) { s.data.batch_size = 0; }, "data.batch_size"},
      {[](RunSpec& s) { s.data.max_seq_len = 1; }, "data.max_seq_len"},
      {[](RunSpec& s) { Lora(s.adapter)->rank = 0; }, "adapter.rank"},
      {[](RunSpec& s) { Lora(s.adapter)->alpha = -1; }, "adapter.alpha"},
      {[](RunSpec& s) { Lora(s.adapter)->dropout = 1; }, "adapter.dropout"},
      {[](RunSpec& s) { Lora(s.adapter)->target_modules = {}; },
       "adapter.target_modules"},
      {[](RunSpec& s) { Lora(s.adapter)->target_modules = {"qkv"}; },
       "adapter.target_modules"},
      {[](RunSpec& s) {
         Lora(s.adapter)->target_modules = {"q_proj", "q_proj"};
       },
       "adapter.target_modules"},
      {[](RunSpec& s) { s.objective = SftSpec{.loss_chunk_tokens = 0}; },
       "objective.loss_chunk_tokens"},
      {[](RunSpec& s) { s.objective = DpoSpec{.beta = 0}; }, "objective.beta"},
      {[](RunSpec& s) { s.objective = DpoSpec{.beta = 2.5}; },
       "objective.beta"},
      {[](RunSpec& s) { s.objective = DpoSpec{.loss_type = "kto"}; },
       "objective.loss_type"},
      {[](RunSpec& s) { s.objective = DpoSpec{.label_smoothing = 0.5}; },
       "objective.label_smoothing"},
      {[](RunSpec& s) {
         s.objective = DpoSpec{.loss_type = "ipo", .label_smoothing = 0.1};
       },
       "objective.label_smoothing"},
      {[](RunSpec& s) { s.objective = DpoSpec{.rpo_alpha = -1}; },
       "objective.rpo_alpha"},
      {[](RunSpec& s) { s.objective = DpoSpec{.max_prompt_len = 99}; },
       "objective.max_prompt_len"},
      {[](RunSpec& s) { s.objective = OrpoSpec{.lambda = 0}; },
       "objective.lambda"},
      {[](RunSpec& s) { s.objective = OrpoSpec{.loss_chunk_tokens = 0}; },
       "objective.loss_chunk_tokens"},
      {[](RunSpec& s) { s.optimizer.learning_rate = -1e-4; },
       "optimizer.learning_rate"},
      {[](RunSpec& s) { s.optimizer.weight_decay = -1; },
       "optimizer.weight_decay"},
      {[](RunSpec& s) { s.optimizer.max_grad_norm = 0; },
       "optimizer.max_grad_norm"},
      {[](RunSpec& s) { s.optimizer.gradient_accumulation_steps = 0; },
       "optimizer.gradient_accumulation_steps"},
      {[](RunSpec& s) { s.schedule.n_epochs = 0; }, "schedule.n_epochs"},
      {[](RunSpec& s) { s.schedule.warmup_steps = -1; },
       "schedule.warmup_steps"},
      {[](RunSpec& s) { s.schedule.lr_scheduler = "step"; },
       "schedule.lr_scheduler"},
      {[](RunSpec& s) { s.checkpoint.every_steps = -1; },
       "checkpoint.every_steps"},
      {[](RunSpec& s) { s.checkpoint.dir.clear(); }, "checkpoint.dir"},
      {[](RunSpec& s) { s.device.device = "tpu"; }, "device.device"},
      {[](RunSpec& s) { s.device.device = "cuda:x"; }, "device.device"},
      {[](RunSpec& s) { s.device.dtype = "float16"; }, "device.dtype"},
      {[](RunSpec& s) { s.evaluation.every_steps = -1; },
       "evaluation.every_steps"},
      {[](RunSpec& s) { s.output.dir.clear(); }, "output.dir"},
      {[](RunSpec& s) { s.self_training.iterations = 17; },
       "self_training.iterations"},
      {[](RunSpec& s) { s.self_training.samples_per_prompt = 0; },
       "self_training.samples_per_prompt"},
      {[](RunSpec& s) { s.self_training.top_p = 0; }, "self_training.top_p"},
      {[](RunSpec& s) { s.self_training.answer_extractor = "json_field"; },
       "self_training.answer_extractor"},
      {[](RunSpec& s) {
         s.self_training.answer_extractor = "regex";
         s.self_training.answer_pattern = "(";
       },
       "self_training.answer_pattern"},
      {[](RunSpec& s) { s.self_training.dedupe = "fuzzy"; },
       "self_training.dedupe"},
      {[](RunSpec& s) { s.self_training.init = "sft"; }, "self_training.init"},
      {[](RunSpec& s) {
         s.self_training.iterations = 1;
         s.objective = OrpoSpec{};
       },
       "self_training.iterations"},
      {[](RunSpec& s) { s.adapter = FullSpec{}; }, "output.merged_dir"},
      {[](RunSpec& s) {
         Lora(s.adapter)->layers_to_transform = {1, 1};
       },
       "adapter.layers_to_transform"},
      {[](RunSpec& s) { Lora(s.adapter)->layers_to_transform = {-1}; },
       "adapter.layers_to_transform"},
      // A selection is for full fine-tuning, each kind alone.
      {[](RunSpec& s) { s.trainable.lisa = LisaSpec{}; }, "trainable.lisa"},
      {[](RunSpec& s) { s.trainable.half_ft = HalfFtSpec{}; },
       "trainable.half_ft"},
      {[](RunSpec& s) { s.trainable.layers = {"0"}; }, "trainable.layers"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.layers = {"0", "x"};
       },
       "trainable.layers"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.modules = {"mlp", "lm_head"};
       },
       "trainable.modules"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.lisa = LisaSpec{.activated_layers = 0};
       },
       "trainable.lisa.activated_layers"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.lisa = LisaSpec{.interval_steps = 0};
       },
       "trainable.lisa.interval_steps"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.lisa = LisaSpec{};
         s.trainable.modules = {"mlp"};
       },
       "trainable.lisa"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.half_ft = HalfFtSpec{.reselect = "step"};
       },
       "trainable.half_ft.reselect"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.half_ft = HalfFtSpec{};
         s.trainable.layers = {"1"};
       },
       "trainable.half_ft"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.half_ft = HalfFtSpec{.fraction = 0};
       },
       "trainable.half_ft.fraction"},
      {[](RunSpec& s) {
         FullFineTuning(s);
         s.trainable.half_ft = HalfFtSpec{.fraction = 1.5};
       },
       "trainable.half_ft.fraction"},
  };
  ASSERT_TRUE(ValidateRunSpec(EveryFieldSet()).ok())
      << ValidateRunSpec(EveryFieldSet());
  for (const TrainableSpec& valid : {TrainableSpec{.layers = {"bottom2"},
                                    .modules = {"up_proj", "down_proj"}},
                                     TrainableSpec{.lisa = LisaSpec{}},
                                     TrainableSpec{.half_ft = HalfFtSpec{}}}) {
    RunSpec s = EveryFieldSet();
    FullFineTuning(s);
    s.trainable = valid;
    EXPECT_TRUE(ValidateRunSpec(s).ok()) << ValidateRunSpec(s);
  }
  for (const Case& c : cases) {
    RunSpec s = EveryFieldSet();
    c.change(s);
    const absl::Status status = ValidateRunSpec(s);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(status.message().find("\"" + c.field + "\""), std::string::npos)
        << c.field << ": " << status;
  }
}

// data.stages: each stage's fields round-trip, its paths resolve against
// the spec's folder, and its mixture and epochs are resume keys.
TEST(RunSpecTest, StagesAreNestedObjects) {
  RunSpec s = EveryFieldSet();
  s.data.training_file.clear();
  s.data.stages = {
      {.name = "specialised",
       .mixture = {.sources = {{.name = "math", .file = "math.jsonl"}}}},
      {.name = "general",
       .mixture = {.sources = {{.name = "g", .file = "/g.jsonl"},
                               {.name = "math",
                                .file = "math.jsonl",
                                .fraction = 0.25}}},
       .n_epochs = 2}};
  ASSERT_TRUE(ValidateRunSpec(s).ok()) << ValidateRunSpec(s);
  const Json json = RunSpecJson(s);
  EXPECT_EQ(json["data"]["stages"][1]["n_epochs"], 2);
  EXPECT_EQ(json["data"]["stages"][1]["mixture"]["sources"][1]["fraction"], 0.25);
  absl::StatusOr<RunSpec> back = ParseRunSpec(json, "/specs");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->data.stages[0].mixture.sources[0].file, "/specs/math.jsonl");
  EXPECT_EQ(back->data.stages[1].mixture.sources[0].file, "/g.jsonl");
  const RunSpec stage = StageRunSpec(*back, 1);
  EXPECT_TRUE(stage.data.stages.empty());
  EXPECT_EQ(stage.data.mixture.sources.size(), 2u);
  EXPECT_EQ(stage.schedule.n_epochs, 2);
  EXPECT_EQ(StageRunSpec(*back, 0).schedule.n_epochs, s.schedule.n_epochs);
  RunSpec other = s;
  other.data.stages[1].mixture.sources[1].fraction = 0.5;
  EXPECT_NE(ResumeKeys(other), ResumeKeys(s));
  other = s;
  other.data.stages[1].n_epochs = 3;
  EXPECT_NE(ResumeKeys(other), ResumeKeys(s));
}

TEST(RunSpecTest, ResumeKeysAreWhatDecidesTheDataAndTheTrainedTensors) {
  const RunSpec base = EveryFieldSet();
  const Json keys = ResumeKeys(base);
  // Key names as checkpoints written before the spec had sections carry.
  EXPECT_EQ(keys, (Json{{"seed", 7},
                        {"chat_template", "chatml"},
                        {"batch_size", 3},
                        {"max_seq_len", 99},
                        {"method", "lora"},
                        {"lora.rank", 5},
                        {"lora.alpha", 3.5},
                        {"lora.dropout", 0.1},
                        {"lora.use_rslora", true},
                        {"lora.target_modules", {"up_proj", "q_proj"}},
                        {"lora.use_dora", true},
                        {"lora.layers_to_transform", {0, 1}},
                        {"gradient_accumulation_steps", 4},
                        {"n_epochs", 2}}));
  // What may change on resume changes no key.
  RunSpec free = base;
  free.optimizer.learning_rate = 1;
  free.optimizer.weight_decay = 0;
  free.optimizer.max_grad_norm = 9;
  free.schedule.warmup_steps = 0;
  free.schedule.lr_scheduler = "constant";
  free.data.packing = true;
  free.objective = SftSpec{.loss_chunk_tokens = 5};
  free.device = DeviceSpec{};
  free.evaluation.every_steps = 1;
  free.checkpoint = {.every_steps = 1, .dir = "/x"};
  free.output = {.dir = "/y"};
  free.model.dir = "/other";  // its config's content hash is the recipe's
  EXPECT_EQ(ResumeKeys(free), keys);
  RunSpec full = base;
  full.adapter = FullSpec{};
  EXPECT_EQ(ResumeKeys(full)["method"], "full");
  EXPECT_FALSE(ResumeKeys(full).contains("lora.rank"));
  EXPECT_FALSE(ResumeKeys(full).contains("trainable"));
  full.trainable.lisa = LisaSpec{};
  EXPECT_EQ(ResumeKeys(full)["trainable"], ToJson(full.trainable));
}

// The nested objects (data.mixture with its sources, and
// objective.masked_thought) round-trip field for field, are validated
// naming the nested field, and are resume keys when on.
TEST(RunSpecTest, MixtureSpecIsNestedObjects) {
  RunSpec s = EveryFieldSet();
  s.data.training_file.clear();
  s.data.mixture = {
      .sources = {{.name = "math",
                   .file = "/math.jsonl",
                   .file_name = "training_mixture.sources[0] file-a",
                   .validation_file = "/mv.jsonl",
                   .validation_file_name = "training_mixture.sources[0] file-v",
                   .weight = 0.7,
                   .proportion = 0.1,
                   .fraction = 0.25},
                  {.name = "code", .file = "/code.jsonl"}},
      .strategy = "temperature",
      .temperature = 2,
      .stop = "all_exhausted"};
  std::get<SftSpec>(s.objective).masked_thought = {.mask_rate = 0.3,
                                                    .schedule = "constant",
                                                    .warmup_ratio = 0.5,
                                                    .mask_token = "12"};
  ASSERT_TRUE(ValidateRunSpec(s).ok()) << ValidateRunSpec(s);
  absl::StatusOr<RunSpec> back = ParseRunSpec(RunSpecJson(s), "/");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(RunSpecJson(*back), RunSpecJson(s));
  const Json json = RunSpecJson(s);
  const Json source = json["data"]["mixture"]["sources"][0];
  const Json default_source = ToJson(DataSpec{
      .mixture = {.sources = {MixtureSourceSpec{}}}})["mixture"]["sources"][0];
  for (const auto& [name, value] : source.items()) {
    EXPECT_NE(value, default_source[name]) << name;
  }
  for (const auto& [name, value] : json["data"]["mixture"].items()) {
    EXPECT_NE(value, ToJson(DataSpec{})["mixture"][name]) << name;
  }
  const Json mt = json["objective"]["masked_thought"];
  for (const auto& [name, value] : mt.items()) {
    EXPECT_NE(value, ToJson(SftSpec{})["masked_thought"][name]) << name;
  }
  // A relative source path is resolved against the spec's folder.
  Json relative = json;
  relative["data"]["mixture"]["sources"][1]["file"] = "c.jsonl";
  EXPECT_EQ(ParseRunSpec(relative, "/d")->data.mixture.sources[1].file,
            "/d/c.jsonl");
  relative["data"]["mixture"]["sources"][1]["weight"] = "x";
  EXPECT_NE(ParseRunSpec(relative, "/d").status().message().find(
                "\"data.mixture.sources[1].weight\""),
            std::string::npos);

  struct Case {
    void (*change)(RunSpec&);
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](RunSpec& r) { r.data.training_file = "/t"; }, "data.training_file"},
      {[](RunSpec& r) { r.data.mixture.sources[1].weight = 0; },
       "data.mixture.sources[1].weight"},
      {[](RunSpec& r) { r.data.mixture.sources[1].name = "math"; },
       "data.mixture.sources[1].name"},
      {[](RunSpec& r) { r.data.mixture.sources[0].name = "a/b"; },
       "data.mixture.sources[0].name"},
      {[](RunSpec& r) { r.data.mixture.sources[0].file.clear(); },
       "data.mixture.sources[0].file"},
      {[](RunSpec& r) { r.data.mixture.sources[0].proportion = 1; },
       "data.mixture.sources[0].proportion"},
      {[](RunSpec& r) { r.data.mixture.sources[1].proportion = 0.2; },
       "data.mixture.sources"},
      {[](RunSpec& r) { r.data.mixture.sources[0].fraction = 0; },
       "data.mixture.sources[0].fraction"},
      {[](RunSpec& r) { r.data.mixture.strategy = "x"; },
       "data.mixture.strategy"},
      {[](RunSpec& r) { r.data.mixture.temperature = 0; },
       "data.mixture.temperature"},
      {[](RunSpec& r) { r.data.mixture.stop = "x"; }, "data.mixture.stop"},
      {[](RunSpec& r) {
         std::get<SftSpec>(r.objective).masked_thought.mask_rate = 1.5;
       },
       "objective.masked_thought.mask_rate"},
      {[](RunSpec& r) {
         std::get<SftSpec>(r.objective).masked_thought.schedule = "x";
       },
       "objective.masked_thought.schedule"},
      {[](RunSpec& r) {
         std::get<SftSpec>(r.objective).masked_thought.warmup_ratio = 0;
       },
       "objective.masked_thought.warmup_ratio"},
      {[](RunSpec& r) {
         std::get<SftSpec>(r.objective).masked_thought.mask_token = "mask";
       },
       "objective.masked_thought.mask_token"},
  };
  for (const Case& c : cases) {
    RunSpec changed = s;
    c.change(changed);
    const absl::Status status = ValidateRunSpec(changed);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(status.message().find("\"" + c.field + "\""), std::string::npos)
        << c.field << ": " << status;
  }

  const Json keys = ResumeKeys(s);
  EXPECT_EQ(keys["mixture"]["strategy"], "temperature");
  EXPECT_EQ(keys["mixture"]["sources"][0]["fraction"], 0.25);
  EXPECT_EQ(keys["masked_thought"]["mask_rate"], 0.3);
  RunSpec moved = s;  // the files' paths may change on resume
  moved.data.mixture.sources[0].file = "/elsewhere.jsonl";
  EXPECT_EQ(ResumeKeys(moved), keys);
  moved.data.mixture.sources[0].weight = 0.8;
  EXPECT_NE(ResumeKeys(moved), keys);
}

}  // namespace
}  // namespace lathe::engine
