// Data curation before training (METHODS.md §8), the engine's operation:
// per line of a data file, its tokens and truncation, its exact and near
// duplicates (data/curation.h), its overlap with a validation file, and
// the base model's loss and perplexity; a selection of the lines. Run by
// `lathe-worker analyze` and by an analysis job's worker.
#ifndef LATHE_WORKER_ENGINE_INFERENCE_ANALYZE_H_
#define LATHE_WORKER_ENGINE_INFERENCE_ANALYZE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/data/clear.h"
#include "worker/engine/data/got_d.h"
#include "worker/engine/inference/clear.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// How the lines are selected, beyond dropping duplicates and validation
// overlaps.
enum class AnalyzeSelection {
  kLossQuantile,  // the base's loss within loss_quantile_low .. _high
  kGotD,          // GOT-D towards a target file (data/got_d.h)
  kClear,         // CLEAR-style confidence filter (data/clear.h)
};

// GOT-D's settings: each line that survives the duplicate and overlap
// checks, and each target line, is embedded as the mean of the model's
// last hidden state over its tokens (cut to max_seq_len); the `budget`
// lines with the smallest calibrated OT gradient are kept.
struct GotDSelection {
  std::string target_file;       // the distribution to move towards (required)
  std::string target_file_name;  // what errors call it; "" = its path
  int64_t budget = 0;            // lines kept, >= 1
  double epsilon_fraction = GotDOptions{}.epsilon_fraction;
  // Pools larger than this are solved in random shards against the whole
  // target (GotDSelectSharded); 0 = as memory allows.
  int64_t shard_size = 0;
  uint64_t seed = 0;  // the shards' shuffle
};

// CLEAR's settings: every chat or prompt/completion line is scored
// (data/clear.h; chat: its last message, the assistant's, is the
// response) and filtered.
struct ClearSelection {
  ClearOptions filter;
  ConsistencyOptions consistency;  // kConfidence only; its extractor unused
  // kConfidence's similarity: exact match of the answers this extracts
  // (data/rft.h; kind "" = token F1 throughout).
  AnswerExtractor answer_extractor = {.kind = ""};
};

struct AnalyzeSpec {
  std::string model_dir;        // the base (required)
  std::string adapter_dir;      // a trained adapter on it; "" = none
  std::string data_file;        // the file analysed (required)
  std::string data_file_name;   // what errors call it; "" = its path
  std::string validation_file;  // overlap reference; "" = none
  std::string validation_file_name;
  std::string chat_template;  // "" = recognized from the base
  int max_seq_len = DataSpec{}.max_seq_len;
  int batch_size = 8;  // lines per forward pass (results as one at a time)
  AnalyzeSelection select = AnalyzeSelection::kLossQuantile;
  // kLossQuantile: lines whose loss lies outside these quantiles (numpy's
  // linear interpolation) are dropped; 0 and 1 drop none.
  double loss_quantile_low = 0;
  double loss_quantile_high = 1;
  GotDSelection got_d;           // kGotD
  ClearSelection clear;          // kClear
  bool keep_duplicates = false;  // else exact and near duplicates are dropped
  std::string out_dir;           // report.jsonl and selected.jsonl (required)
  DeviceSpec device = {.device = "cpu", .dtype = "float32"};
};

struct AnalyzeSummary {
  int64_t examples = 0;
  int64_t kept = 0;
  int64_t truncated = 0;
  int64_t exact_duplicates = 0;
  int64_t near_duplicates = 0;
  int64_t validation_overlaps = 0;
  double loss_low = 0;  // the losses at the selection's quantiles
  double loss_high = 0;
  // kGotD: the regularisation used, Sinkhorn's iterations and its final
  // relative marginal error.
  double got_d_epsilon = 0;
  int got_d_iterations = 0;
  double got_d_marginal_error = 0;
  int got_d_shards = 0;  // the pool's shards (1: solved whole)
};

// Writes out_dir/report.jsonl (one JSON line per data line: line, tokens,
// truncated, loss, perplexity, exact_duplicate_of, near_duplicate_of,
// near_jaccard, validation_overlap, validation_jaccard, kept, reasons;
// kGotD adds got_d_gradient (null for a line dropped before the OT);
// kClear adds clear_score and its signals: clear_log_likelihood, or
// clear_consistency and clear_reflection) and out_dir/selected.jsonl (the
// kept lines verbatim). Reads each file once. `progress(done, total)` as
// lines are scored. Errors: INVALID_ARGUMENT for a bad option or a bad line
// (naming the file by its name and the line), the model's own.
absl::StatusOr<AnalyzeSummary> AnalyzeData(
    const AnalyzeSpec& spec,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_INFERENCE_ANALYZE_H_
