// The merge spec: what one merge of fine-tunes of a base model computes
// (METHODS.md §5, docs/merging.md). Torch-free.
//
// A merge reads a base model folder and N inputs, each a full fine-tuned
// model folder of the same architecture or a PEFT LoRA adapter on the base,
// combines their task vectors tau_i = theta_i - theta_0 tensor by tensor
// (merge_tensor.h), and writes a model folder (and, on request, a LoRA
// adapter re-factorised from the merged delta). As for the run spec, on a
// worker every value arrives resolved; the defaults below only matter for
// local `lathe-worker merge` runs.
#ifndef LATHE_WORKER_ENGINE_MERGE_MERGE_SPEC_H_
#define LATHE_WORKER_ENGINE_MERGE_MERGE_SPEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// How the task vectors combine (merge_tensor.h has each formula). Names as
// mergekit spells them, plus "greedy_soup".
enum class MergeMethod {
  kLinear,          // "linear": sum w_i theta_i / sum w_i (uniform soup)
  kTaskArithmetic,  // "task_arithmetic": theta_0 + lambda sum w_i tau_i
  kTies,            // "ties": trim, elect sign, disjoint mean
  kDareLinear,      // "dare_linear": random drop and rescale, then sum
  kDareTies,        // "dare_ties": random drop and rescale, then TIES
  kBreadcrumbs,     // "breadcrumbs": drop both tails of |tau| per row
  kLines,           // "lines": layer-increasing scaling of sum w_i tau_i
  kGreedySoup,      // "greedy_soup": uniform soup of a greedy selection
};

// TIES sign election: the sign of sum_i w_i tau_i ("total", TIES' "mass")
// or of sum_i sign(w_i tau_i) ("frequency").
enum class MajoritySign { kTotal, kFrequency };

// "linear" -> kLinear, ...; INVALID_ARGUMENT listing the names otherwise.
absl::StatusOr<MergeMethod> ParseMergeMethod(absl::string_view name);
absl::string_view MergeMethodName(MergeMethod method);
absl::StatusOr<MajoritySign> ParseMajoritySign(absl::string_view name);
absl::string_view MajoritySignName(MajoritySign sign);

// The method's parameters; each method reads only those named beside it.
struct MergeParams {
  MergeMethod method = MergeMethod::kLinear;
  // Per input, in input order; empty = 1 each (greedy_soup: must be empty).
  std::vector<double> weights;  // {0.7, 0.3}
  // Multiplies the merged task vector: task_arithmetic, ties, dare_linear,
  // dare_ties, breadcrumbs (must stay 1 for linear, lines, greedy_soup).
  double lambda = 1.0;  // 0.5
  // ties: the fraction of each tau_i's entries kept (largest |.|);
  // dare_*: each entry's keep probability 1 - p, in (0, 1].
  double density = 1.0;                               // 0.2
  MajoritySign majority_sign = MajoritySign::kTotal;  // ties, dare_ties
  // breadcrumbs, per row: the fraction of the row kept (the reference
  // code's beta = top_k_keep, mergekit's density) after removing the gamma
  // fraction of largest |tau| (gamma = top_k_remove, mergekit's gamma).
  double beta = 0.9;    // 0.2
  double gamma = 0.01;  // 0.1
  // lines: decoder layer l of L gets (alpha + beta l / (L - 1)) sum w_i
  // tau_i, every other tensor alpha.
  double lines_alpha = 1.0;  // 0.5
  double lines_beta = 0.0;   // 0.5
  uint64_t seed = 0;         // 42: dare_* drop masks
};

// One input: a model folder (config.json) or a PEFT LoRA adapter folder
// (adapter_config.json).
struct MergeInputSpec {
  std::string dir;   // "runs/math/adapter" (required)
  std::string name;  // what errors and reports call it; "" = dir
};

// The optional LoRA adapter re-factorised from the merged delta.
struct LoraExportSpec {
  std::string dir;  // "out/lora"; "" = none
  int rank = 8;     // 16: every factor's rank (zero-padded past min(out, in))
  // Projections that get factors; empty = the union of the LoRA inputs'
  // target_modules (refused when no input is a LoRA adapter).
  std::vector<std::string> target_modules;  // {"q_proj", "v_proj"}
};

// greedy_soup's held-out data.
struct GreedySoupSpec {
  std::string validation_file;       // "valid.jsonl" (required)
  std::string validation_file_name;  // what errors call it; "" = its path
  std::string chat_template;         // "" = recognized from the base
  int max_seq_len = DataSpec{}.max_seq_len;  // 2048: longer examples cut
  DeviceSpec device = {.device = "cpu", .dtype = "float32"};  // scoring
};

struct MergeSpec {
  std::string base_dir;  // "models/Llama-3.2-1B" (required)
  // adapter_config.json's base_model_name_or_path for the LoRA export when
  // config.json names no Hugging Face model; "" = base_dir.
  std::string base_model_name;
  std::vector<MergeInputSpec> inputs;  // at least one
  MergeParams params;
  // The merged model folder: the base's config.json and tokenizer files,
  // model.safetensors in the base's dtype.
  std::string output_dir;  // "out/merged" (required)
  LoraExportSpec lora;
  GreedySoupSpec soup;  // greedy_soup only
};

// INVALID_ARGUMENT naming the field ("merge.density") for a value out of
// range or one that the method cannot take.
absl::Status Validate(const MergeSpec& spec);

// The weights of the spec's inputs: params.weights, or 1 each.
std::vector<double> InputWeights(const MergeSpec& spec);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MERGE_MERGE_SPEC_H_
