// The run spec: everything one engine run does, in sections. Torch-free.
//
// Each section is a small struct with its defaults, and an example value
// beside each field. Each has
//   - one JSON mapping (the section's object in spec.json; ToJson and
//     FromJson are written from one field list per section),
//   - one validation (Validate: INVALID_ARGUMENT naming "section.field"),
//   - one "must match on resume" rule (AddResumeKeys: the fields a checkpoint
//     must have been written with to be resumed).
// Components receive only their own section (the LoRA adapter gets LoraSpec,
// the optimizer OptimizerSpec, ...); a recipe (recipes/) reads the whole
// spec and hands each component its part.
//
// On a worker, lathed has settled every value (server/job_request.cc) and
// worker/agent/job_options.cc translates the job into this spec; the
// defaults below only matter for local `lathe-worker train spec.json` runs.
#ifndef LATHE_WORKER_ENGINE_SPEC_RUN_SPEC_H_
#define LATHE_WORKER_ENGINE_SPEC_RUN_SPEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/half_ft.h"
#include "nlohmann/json.hpp"

namespace lathe::engine {

// "model": the base model and how its text is formatted.
struct ModelSpec {
  // A Hugging Face folder: config.json, model.safetensors, tokenizer.
  std::string dir;  // "models/Llama-3.2-1B" (required)
  // adapter_config.json's base_model_name_or_path when config.json names
  // no Hugging Face model; "" = dir.
  std::string base_model_name;  // "meta-llama/Llama-3.2-1B"
  // Chat template family; "" recognizes it from tokenizer_config.json.
  std::string chat_template;  // "llama3" (or zephyr, chatml, mistral)
};

// "data.mixture.sources[i]": one training file of a mixture
// (METHODS.md §2.2, data/mixture.h).
struct MixtureSourceSpec {
  // Unique; the source's validation loss is reported as
  // "valid_loss/<name>". Letters, digits, '.', '_', '-'.
  std::string name;       // "math" (required)
  std::string file;       // "math.jsonl" (required)
  std::string file_name;  // "training_mixture.sources[0] file-abc": errors
  std::string validation_file;       // "math-valid.jsonl"; "" = none
  std::string validation_file_name;  // as file_name
  double weight = 1;  // 0.7: > 0; the share of draws under "weighted"
  // In [0, 1): a fixed share of every epoch's examples, drawn on top of the
  // other sources (a general-data regulariser); 0 = drawn by the strategy.
  double proportion = 0;  // 0.1
  // In (0, 1]: the source is a seeded subsample of floor(fraction * n) of
  // its examples, drawn once without replacement (DMT's k).
  double fraction = 1;  // 0.00390625 (1/256)
};

// "data.mixture": several training files and how an epoch draws from them.
// Off while sources is empty (data.training_file is then the data).
struct MixtureSpec {
  std::vector<MixtureSourceSpec> sources;
  // "concat": every example of every source once per epoch, shuffled;
  // "weighted": each draw picks source i with p_i = w_i / sum(w);
  // "temperature": p_i proportional to n_i^(1/T) (T5's mixing).
  std::string strategy = "concat";
  double temperature = 1;  // 2: T for "temperature"; > 0
  // The draws of an epoch of "weighted" / "temperature": "first_exhausted"
  // min_i floor(n_i / p_i) (until the first source would be used up),
  // "all_exhausted" max_i ceil(n_i / p_i) (until each has been seen once
  // in expectation).
  std::string stop = "first_exhausted";
};

// "data.stages[i]": one stage of a multi-stage run (DMT, METHODS.md §2.2).
// Stages train one after another on the same weights: stage i+1 starts from
// stage i's trained weights with a fresh optimizer and its own learning-rate
// schedule (warmup included), exactly as a separate run from those weights
// with the run's seed would (its data order, subsamples and dropout seeded
// by the run's seed again). A trainable selection with reselect "stage"
// draws a new half per stage. Steps are counted across the stages.
struct StageSpec {
  std::string name;     // "general"; "" = "stage-<i+1>"
  MixtureSpec mixture;  // the stage's training data (required)
  int n_epochs = 0;     // 2; 0 = schedule.n_epochs
};

// "data": the JSONL files and how examples become batches.
struct DataSpec {
  std::string training_file;    // "train.jsonl" (required without mixture)
  std::string validation_file;  // "valid.jsonl"; "" = none
  // What errors call the two files ("" = their paths): a worker gives the
  // job's file ids, so that no path of its own reaches the job's owner.
  std::string training_file_name;    // "training_file file-abc"
  std::string validation_file_name;  // "validation_file file-xyz"
  int batch_size = 4;                // 8: examples per micro-batch
  int max_seq_len = 512;             // 2048: longer examples are cut
  // Each micro-batch's examples end to end in one row, with per-example
  // attention and positions, instead of one padded row each (see
  // data/packing.h): the same loss, no padding computed.
  bool packing = true;
  MixtureSpec mixture;  // several training files instead of training_file
  // Several stages, each with its own mixture, instead of training_file and
  // mixture (both then empty); SFT only.
  std::vector<StageSpec> stages;
};

// "adapter" {"type": "lora", ...}: low-rank factors on the projections; the
// result is a PEFT adapter.
struct LoraSpec {
  int rank = 8;             // 16: r
  double alpha = 16.0;      // 32: lora_alpha; scale = alpha / rank
  double dropout = 0.0;     // 0.05: lora_dropout
  bool use_rslora = false;  // true: scale = alpha / sqrt(rank)
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj",
                                             "o_proj"};  // + gate/up/down
  // DoRA (PEFT's use_dora): each adapted weight is m * (W + s B A) /
  // ||W + s B A|| per output row, with a trained magnitude m per row.
  bool use_dora = false;  // true
  // PEFT's layers_to_transform: only these decoder layers get factors;
  // empty = every layer.
  std::vector<int> layers_to_transform;  // {0, 1}
};

// "adapter" {"type": "full"}: every weight is trained; the result is a
// model folder in the base's layout.
struct FullSpec {};

// "adapter" {"type": "prompt_tuning", ...}: N trained virtual-token
// embeddings before every example, the model frozen (METHODS.md §10); the
// result is a PEFT PROMPT_TUNING adapter (adapters/prompt_tuning.h).
struct PromptTuningSpec {
  int num_virtual_tokens = 20;  // 8: N
  // PEFT's prompt_tuning_init: "random" (N(0, 1), nn.Embedding's),
  // "text" (the embeddings of init_text's tokens, cut or repeated to N),
  // "sample_vocab" (the embeddings of N random vocabulary ids).
  std::string init = "random";  // "text"
  std::string init_text;        // "Classify the sentiment:" (for "text")
};

// "adapter" {"type": "s2ft", ...}: S²FT, structured sparse fine-tuning
// (METHODS.md §6.1, common/s2ft_selection.h): whole rows or columns of a
// few frozen projections are trained densely, chosen at random model-wide
// from `seed` as the reference draws them. The result is the merged model
// folder plus the sparse diff (adapters/s2ft.h) that `lathe-worker
// s2ft-apply` adds to the base.
struct S2ftSpec {
  double d_ratio = 0.03;  // 0.02: of all (layer, FFN channel): down_proj columns
  double u_ratio = 0;     // 0.01: of all (layer, FFN channel): up_proj rows
  double o_ratio = 0;     // 0.052: of all (layer, query head): o_proj columns
  double v_ratio = 0;     // 0.01: of all (layer, KV head): v_proj rows
  // Python's random.seed of the selection; -1 = the run's seed.
  int64_t seed = -1;  // 0
};

using AdapterSpec =
    std::variant<LoraSpec, FullSpec, PromptTuningSpec, S2ftSpec>;

// "trainable": which of the model's tensors a full fine-tuning run trains
// (METHODS.md §2.3 coarse level, §4); adapters/selection.h applies it. No
// field set = every weight. At most one of: layers and/or modules, lisa,
// half_ft.
struct LisaSpec {
  // LISA (LMFlow): every interval_steps optimizer steps (from step 0),
  // train activated_layers decoder layers drawn afresh, plus the
  // embeddings, final norm and head.
  int activated_layers = 2;  // 1: gamma
  int interval_steps = 20;   // 10: K
};
struct HalfFtSpec {
  // HFT: a fraction of the decoder layers' matrices, counted and spread by
  // common/half_ft.h's rule (0.5: 2 of 4 attention, 2 or 1 of 3 MLP).
  std::string reselect = "stage";  // "epoch": a new draw every epoch
  uint64_t seed = 0;               // 7; 0 = the run's seed
  double fraction = kDefaultHalfFtFraction;  // 0.25; in (0, 1]
  bool include_embeddings = false;  // also the embeddings, norm and head
};
struct TrainableSpec {
  // Decoder layers: indices, ranges or bands (common/layer_ranges.h).
  std::vector<std::string> layers;  // {"2-3"}, {"bottom2"}; empty = all
  // Which tensors of those layers: projection names, "self_attn", "mlp",
  // "input_layernorm", "post_attention_layernorm".
  std::vector<std::string> modules;  // {"up_proj", "down_proj"}; empty = all
  std::optional<LisaSpec> lisa;
  std::optional<HalfFtSpec> half_ft;

  // Whether any field is set (a run with none trains every weight).
  bool Selects() const {
    return !layers.empty() || !modules.empty() || lisa || half_ft;
  }
};

// "objective.masked_thought": Masked Thought (METHODS.md §3,
// data/masked_thought.h): each response (target) input token is replaced by
// the mask token with probability p, a fresh mask every step; the targets
// stay the original tokens. Off while mask_rate is 0 (lathed sets 0.2 when
// a job asks for it).
struct MaskedThoughtSpec {
  double mask_rate = 0;  // 0.2: p, or p_max under "linear_warmup"; [0, 1]
  // "linear_warmup": p(step) = min(p_max * step / (total_steps *
  // warmup_ratio + 1), p_max), step = steps done before this one (the
  // main repo's update_mask_rate); "constant": p_max from the first step.
  std::string schedule = "linear_warmup";
  double warmup_ratio = 2.0 / 3.0;  // 0.667, in (0, 1]
  std::string mask_token = "pad";   // "pad" (the tokenizer's) or an id "0"
};

// "objective" {"type": "sft", ...}: next-token cross-entropy on the
// completion (assistant) tokens. The methods issues add more variants.
struct SftSpec {
  // Target positions per chunk of the output head + cross-entropy; the loss
  // path holds at most loss_chunk_tokens x vocab_size float32 logits.
  int loss_chunk_tokens = 1024;  // 4096
  MaskedThoughtSpec masked_thought;
};

// "objective" {"type": "dpo", ...}: Direct Preference Optimization and its
// variants on preference pairs (../shared/METHODS.md §1, TRL v0.24's
// semantics): the policy's log-probability margin of the preferred over the
// non-preferred reply against the reference model's (the base with the
// adapter off for LoRA; log-probabilities computed before the first step
// for full fine-tuning).
struct DpoSpec {
  double beta = 0.1;               // 0.5: β, in (0, 2]
  std::string loss_type = "sigmoid";  // "robust", "hinge", "ipo"
  // ε: cDPO's label smoothing (sigmoid) or robust DPO's noise rate; [0, 0.5).
  double label_smoothing = 0.0;  // 0.1
  // RPO: α times the NLL of the preferred reply is added; 0 = off.
  double rpo_alpha = 0.0;  // 1.0
  // The prompt keeps its last max_prompt_len tokens (below
  // data.max_seq_len; lathed's auto is min(512, max_seq_len / 2), this
  // default that for the default max_seq_len); the whole pair row is then
  // cut to data.max_seq_len, keeping its start.
  int max_prompt_len = 256;      // 512
  int loss_chunk_tokens = 1024;  // as SftSpec's
  // The reference: "auto" (a LoRA policy's base with the adapter off; full
  // fine-tuning's log-probabilities before the first step) or
  // "precomputed" (the model's log-probabilities before the first step for
  // LoRA too: SPIN's opponent, the model an iteration starts from).
  std::string reference = "auto";
};

// "objective" {"type": "orpo", ...}: ORPO (METHODS.md §1.8): the NLL of the
// preferred row (prompt included, as TRL) plus λ times the odds-ratio loss
// of the mean token log-probabilities; no reference model.
struct OrpoSpec {
  double lambda = 0.1;  // 0.25: TRL's beta
  int max_prompt_len = 256;  // 512: as DpoSpec's
  int loss_chunk_tokens = 1024;
};

using ObjectiveSpec = std::variant<SftSpec, DpoSpec, OrpoSpec>;

// "optimizer": AdamW and what one optimizer step is.
struct OptimizerSpec {
  double learning_rate = 2e-4;  // 1e-4: peak, after warmup
  // AdamW's decoupled decay, on LoRA's A/B or, for full fine-tuning, on the
  // matrices (not norms, biases).
  double weight_decay = 0.0;           // 0.01
  double max_grad_norm = 1.0;          // 0.3: clip the total norm
  int gradient_accumulation_steps = 1;  // 4: micro-batches per step
};

// "schedule": how long, and the learning rate over the steps.
struct ScheduleSpec {
  int n_epochs = 3;                     // 1
  int warmup_steps = 0;                 // 100: linear from 0 to the peak
  std::string lr_scheduler = "linear";  // "cosine", "constant": after warmup
};

// "checkpoint": where and when a run saves what resuming needs.
struct CheckpointSpec {
  int every_steps = 0;      // 500; 0 = only when a stop asks for one
  std::string dir;          // "ckpt": checkpoints go to <dir>/step-<N>
  std::string resume_from;  // "ckpt/step-500"; "" = fresh start
  // Also after the last step (with a dir): the run's end as a checkpoint.
  bool at_end = false;
};

// "device": where and in which precision the run computes.
struct DeviceSpec {
  std::string device = "auto";  // "cpu", "cuda", "cuda:1"; auto = cuda if any
  // auto = bfloat16 on CUDA, float32 on CPU (see device/).
  std::string dtype = "auto";  // "float32", "bfloat16"
  // Recompute each decoder layer's activations in backward instead of
  // keeping them: less memory, about a third more compute.
  bool activation_checkpointing = false;  // true
};

// "evaluation": validation passes over data.validation_file.
struct EvaluationSpec {
  int every_steps = 0;  // 50; 0 = only after the last step
  // The forgetting report (METHODS.md §9.1): a held-out general-data file
  // (chat, prompt/completion or text) whose loss is measured before the
  // first step and after the last; "" = none.
  std::string general_file;       // "general.jsonl"
  std::string general_file_name;  // as data.training_file_name
  // Which tokens its loss is over: "assistant" (the trained tokens, as the
  // training loss) or "all" (every next token).
  std::string general_tokens = "assistant";
  // Intruder dimensions (METHODS.md §9.2) of every LoRA-adapted matrix
  // after training: of the top intruder_top_k singular vectors of W0 + dW,
  // those whose largest |cosine| with W0's left singular vectors is below
  // intruder_epsilon. 0 = not counted; LoRA runs only.
  int intruder_top_k = 10;
  double intruder_epsilon = 0.5;
  // PEFT's reduce_intruder_dimension after training (§9.2; LoRA without
  // DoRA): in each adapted matrix W_ft = W0 + s B A, the intruders I among
  // its top intruder_top_k (10 when 0) left singular vectors become
  // W_ft + (lambda - 1) U_I S_I V_I^T, re-factorised by SVD to rank r with
  // sqrt(S) split between B and A; the result is that adapter. -1 = off.
  double intruder_mitigation_lambda = -1;  // 0.75 (PEFT's default); [0, 1]
};

// "self_training": training on the model's own generations, in iterations
// (recipes/rft.h). With objective sft, rejection-sampling fine-tuning (RFT,
// METHODS.md §7.2; iterated as ReST-EM): each iteration samples
// samples_per_prompt completions per training example's prompt (every
// message before its last, an assistant reply: the gold one) with the
// current model, keeps those whose extracted answer equals the gold
// reply's (data/rft.h), deduplicates them, and trains SFT on the gold
// replies plus the kept ones. With objective dpo, SPIN (METHODS.md §7.1):
// one generation per prompt is the rejected reply, the gold one the
// chosen, and DPO trains against the model the iteration started from
// (samples_per_prompt 1; the answer settings unused). LoRA or full.
struct SelfTrainingSpec {
  int iterations = 0;          // 2; 0 = off, at most 16
  int samples_per_prompt = 4;  // 100 (the paper's k); 1..256
  double temperature = 0.7;    // the paper's; 0 = greedy
  double top_p = 1.0;          // (0, 1]
  int max_new_tokens = 256;    // 1..4096
  // data/rft.h AnswerExtractor: "gsm8k", "last_number", "regex", "exact".
  std::string answer_extractor = "gsm8k";
  std::string answer_pattern;  // "regex" only: "answer: (\\w+)"
  std::string dedupe = "equations";  // "exact", "none" (RftDedupe)
  bool include_gold = true;  // the gold replies are in every RFT set
  // What each iteration trains from: "current" (the model the iteration
  // sampled with) or "base" (the job's model again: the paper's and
  // ReST-EM's; the sampler is still the newest model).
  std::string init = "current";
  // SPIN: an iteration after the first also trains on the previous
  // iteration's pairs (the paper's SPIN_iter0 + SPIN_iter1).
  bool accumulate_previous = true;
};

// "output": where the result goes.
struct OutputSpec {
  // The adapter (LoRA) or the model folder (full) (required).
  std::string dir;  // "out/adapter"
  // LoRA only: also write the merged model folder here ("" = none).
  std::string merged_dir;  // "out/merged"
};

struct RunSpec {
  // Decides the data order, the adapter's initialization and dropout.
  uint64_t seed = 42;
  ModelSpec model;
  DataSpec data;
  AdapterSpec adapter;
  TrainableSpec trainable;
  ObjectiveSpec objective;
  OptimizerSpec optimizer;
  ScheduleSpec schedule;
  CheckpointSpec checkpoint;
  DeviceSpec device;
  EvaluationSpec evaluation;
  SelfTrainingSpec self_training;
  OutputSpec output;
};

// "lora", "full", "prompt_tuning" or "s2ft"; "sft", "dpo" or "orpo".
std::string AdapterType(const AdapterSpec& adapter);
std::string ObjectiveType(const ObjectiveSpec& objective);
// The API's name of the objective's hyperparameters, for errors about a
// setting: "method.supervised.hyperparameters", "method.dpo.…", ….
std::string HyperparametersField(const ObjectiveSpec& objective);
// Whether the objective trains on preference pairs (data in the preference
// format) rather than on chat / prompt-completion / text examples.
bool IsPreference(const ObjectiveSpec& objective);
// The LoRA settings, or nullptr for another adapter.
inline const LoraSpec* Lora(const AdapterSpec& a) {
  return std::get_if<LoraSpec>(&a);
}
inline LoraSpec* Lora(AdapterSpec& a) { return std::get_if<LoraSpec>(&a); }

// Per section: its JSON object, its reading (fields absent keep their
// defaults; INVALID_ARGUMENT naming "section.field" for an unknown field or
// a wrong type), its validation, and its resume keys (added to *keys).
#define LATHE_RUN_SPEC_SECTION(Spec)                                       \
  nlohmann::json ToJson(const Spec& section);                              \
  absl::Status FromJson(const nlohmann::json& json, Spec* section);       \
  absl::Status Validate(const Spec& section);                              \
  void AddResumeKeys(const Spec& section, nlohmann::json* keys);
LATHE_RUN_SPEC_SECTION(ModelSpec)
LATHE_RUN_SPEC_SECTION(DataSpec)
LATHE_RUN_SPEC_SECTION(AdapterSpec)
LATHE_RUN_SPEC_SECTION(TrainableSpec)
LATHE_RUN_SPEC_SECTION(ObjectiveSpec)
LATHE_RUN_SPEC_SECTION(OptimizerSpec)
LATHE_RUN_SPEC_SECTION(ScheduleSpec)
LATHE_RUN_SPEC_SECTION(CheckpointSpec)
LATHE_RUN_SPEC_SECTION(DeviceSpec)
LATHE_RUN_SPEC_SECTION(EvaluationSpec)
LATHE_RUN_SPEC_SECTION(SelfTrainingSpec)
LATHE_RUN_SPEC_SECTION(OutputSpec)
#undef LATHE_RUN_SPEC_SECTION

// spec.json: {"seed": 42, "model": {...}, "data": {...}, "adapter": {"type":
// "lora", ...}, "trainable": {...}, "objective": {"type": "sft", ...},
// "optimizer": {...}, "schedule": {...}, "checkpoint": {...}, "device":
// {...}, "evaluation": {...}, "output": {...}}. Sections absent keep their
// defaults; relative paths are resolved against `base_dir`. A field of the old
// flat layout
// ("n_epochs") is refused naming its new place ("schedule.n_epochs").
absl::StatusOr<RunSpec> ParseRunSpec(const nlohmann::json& json,
                                     const std::string& base_dir);

// The spec.json that ParseRunSpec reads back as `spec`.
nlohmann::json RunSpecJson(const RunSpec& spec);

// Every section's validation, then the rules across sections (a checkpoint
// interval needs a checkpoint dir; merged_dir is for LoRA, a trainable
// selection for full fine-tuning).
absl::Status ValidateRunSpec(const RunSpec& spec);

// The spec of stage `i` of a multi-stage run (REQUIRES: i <
// spec.data.stages.size()): `spec` with that stage's mixture as
// data.mixture, no stages, and its n_epochs.
RunSpec StageRunSpec(const RunSpec& spec, size_t i);

// The resume keys of every section and the seed: a checkpoint is resumed
// only by a run whose keys equal those it was written with. (Learning rate,
// schedule, weight decay, clipping, evaluation, device and output may change
// on resume, and so may packing and loss chunking: they change how a step is
// computed, not its examples.) The recipe adds the content hashes of the
// model config and the training file.
nlohmann::json ResumeKeys(const RunSpec& spec);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_SPEC_RUN_SPEC_H_
