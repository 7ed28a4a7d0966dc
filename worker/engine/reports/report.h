// What the after-job reports (METHODS.md §9) found: torch-free, for the
// run's result (recipes/run.h). Computed by reports/reports.h.
#ifndef LATHE_WORKER_ENGINE_REPORTS_REPORT_H_
#define LATHE_WORKER_ENGINE_REPORTS_REPORT_H_

#include <cmath>
#include <cstdint>
#include <string>

namespace lathe::engine {

// The forgetting report (§9.1): the held-out general set's loss before
// training (the base model) and after.
struct ForgettingReport {
  double loss_before = 0;
  double loss_after = 0;
  int64_t tokens = 0;
  std::string tokens_counted;  // "assistant" or "all"
  double delta() const { return loss_after - loss_before; }
  double ppl_ratio() const { return std::exp(delta()); }
};

// One adapted matrix's intruder count: its similarities below `epsilon`.
struct IntruderMatrix {
  std::string name;  // "model.layers.0.self_attn.q_proj.weight"
  int intruders = 0;
  double min_similarity = 1;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_REPORTS_REPORT_H_
