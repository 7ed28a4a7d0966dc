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
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

struct AnalyzeSpec {
  std::string model_dir;               // the base (required)
  std::string data_file;               // the file analysed (required)
  std::string data_file_name;          // what errors call it; "" = its path
  std::string validation_file;         // overlap reference; "" = none
  std::string validation_file_name;
  std::string chat_template;           // "" = recognized from the base
  int max_seq_len = DataSpec{}.max_seq_len;
  // Lines whose loss lies outside these quantiles (numpy's linear
  // interpolation) are dropped; 0 and 1 drop none.
  double loss_quantile_low = 0;
  double loss_quantile_high = 1;
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
  double loss_low = 0;   // the losses at the selection's quantiles
  double loss_high = 0;
};

// Writes out_dir/report.jsonl (one JSON line per data line: line, tokens,
// truncated, loss, perplexity, exact_duplicate_of, near_duplicate_of,
// near_jaccard, validation_overlap, validation_jaccard, kept, reasons) and
// out_dir/selected.jsonl (the kept lines verbatim). `progress(done, total)`
// after each line's loss. Errors: INVALID_ARGUMENT for a bad option or a
// bad line (naming the file by its name and the line), the model's own.
absl::StatusOr<AnalyzeSummary> AnalyzeData(
    const AnalyzeSpec& spec,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_INFERENCE_ANALYZE_H_
