// GOT-D data selection (Kang et al., ICLR 2024, arXiv 2405.02774;
// METHODS.md §8.1): choose the candidates whose probability mass, if
// raised, lowers the entropic optimal-transport distance from the candidate
// pool to a target sample the most. Torch-free: it takes the embeddings
// (the caller embeds the lines: inference/analyze.h mean-pools the base
// model's last hidden state).
//
// The selection, as METHODS.md derives it from OT duality (no reference
// code was located; the calibration is LAVA's, same lab):
//   C_ij = ||e_i - t_j||^2 (on L2-normalised embeddings: 2 - 2 cos);
//   (f, g) = the dual potentials of entropic OT between a = 1/N on the
//            candidates and b = 1/M on the targets (log-domain Sinkhorn,
//            regularisation epsilon);
//   G_i = f_i - (sum_{k != i} f_k) / (N - 1), the calibrated gradient of
//         the OT distance with respect to candidate i's mass;
//   the `budget` candidates with the smallest G_i are selected.
#ifndef LATHE_WORKER_ENGINE_DATA_GOT_D_H_
#define LATHE_WORKER_ENGINE_DATA_GOT_D_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace lathe::engine {

struct SinkhornOptions {
  double epsilon = 0;  // the entropic regularisation (> 0); POT's `reg`
  int max_iterations = 10000;
  // Stop when an f update changes no f_i by more than tolerance * epsilon,
  // i.e. when every candidate's transported mass is within a relative
  // tolerance of a_i (the f update is f_i -= epsilon * log(row_i / a_i)).
  double tolerance = 1e-10;
};

// Dual potentials of entropic OT with the convention of POT's
// ot.sinkhorn: the plan is P_ij = exp((f_i + g_j - C_ij) / epsilon), so
// f = epsilon * log(u) and g = epsilon * log(v) for POT's log['u'],
// log['v']. Defined up to (f + c, g - c).
struct SinkhornResult {
  std::vector<double> f;  // [N]
  std::vector<double> g;  // [M]
  int iterations = 0;
  // max_i |sum_j P_ij - a_i| / a_i at the end (the columns are exact
  // after each g update).
  double marginal_error = 0;
  bool converged = false;
};

// Log-domain Sinkhorn on `cost` (row-major [N, M]) between the
// distributions `a` [N] and `b` [M] (positive, each summing to 1):
// alternately
//   f_i = epsilon log a_i - epsilon LSE_j((g_j - C_ij) / epsilon),
//   g_j = epsilon log b_j - epsilon LSE_i((f_i - C_ij) / epsilon),
// from g = 0, stable for any epsilon. INVALID_ARGUMENT for mismatched
// sizes, a non-positive or non-finite epsilon, a non-finite cost, or a
// non-positive weight. Not converging within max_iterations is no error:
// the result says so.
absl::StatusOr<SinkhornResult> LogSinkhorn(const std::vector<double>& cost,
                                           const std::vector<double>& a,
                                           const std::vector<double>& b,
                                           const SinkhornOptions& options);

// G_i = f_i - (sum_{k != i} f_k) / (N - 1). REQUIRES: f.size() >= 2.
std::vector<double> CalibratedGradient(const std::vector<double>& f);

// The median of `values` (the mean of the two middle ones for an even
// count). REQUIRES: values non-empty.
double Median(std::vector<double> values);

struct GotDOptions {
  int64_t budget = 0;  // candidates to select, >= 1
  // epsilon = epsilon_fraction * the median cost, unless `epsilon` (not 0)
  // gives it directly. 0.1 is the upper end of METHODS.md's 0.05-0.1
  // (Sinkhorn needs fewer iterations the larger it is).
  double epsilon_fraction = 0.1;
  double epsilon = 0;
  bool normalize = true;  // L2-normalise the embeddings first
  int max_iterations = SinkhornOptions{}.max_iterations;
  double tolerance = SinkhornOptions{}.tolerance;
};

struct GotDResult {
  std::vector<double> gradient;   // G_i, [N]
  std::vector<int64_t> selected;  // min(budget, N) indices, smallest G first
  double median_cost = 0;
  double epsilon = 0;  // the one used
  SinkhornResult duals;
};

// GOT-D over `candidates` [N][D] and `targets` [M][D] (any D, the same for
// all). Ties in G are broken by the lower index. INVALID_ARGUMENT for fewer
// than 2 candidates, no target, mismatched or empty dimensions, a zero
// vector to normalise, a non-finite component, budget < 1, or a bad
// epsilon (epsilon_fraction must be > 0; a median cost of 0, every
// candidate on every target, needs `epsilon`).
absl::StatusOr<GotDResult> GotDSelect(
    const std::vector<std::vector<float>>& candidates,
    const std::vector<std::vector<float>>& targets, const GotDOptions& options);

// METHODS.md §8.1 step 6: a pool too large for one N x M cost matrix is
// solved in random shards against the whole target sample. The candidates
// are shuffled with `seed` (std::mt19937_64) and cut into
// ceil(N / shard_size) shards of near-equal size; the budget is split
// between them in proportion to their sizes (largest remainders); each
// shard is GotDSelect with the epsilon of the first shard (so that every
// shard is regularised alike) and keeps its share with the smallest G.
// gradient[i] is candidate i's G within its shard; `selected` lists the
// shards' picks, each shard's smallest G first. shard_size 0 = as many
// candidates as keep a shard's cost matrix within kGotDMaxCostEntries (at
// least 4, so every shard has 2); with N <= shard_size this is GotDSelect
// exactly. Errors as GotDSelect.
inline constexpr int64_t kGotDMaxCostEntries = int64_t{1} << 26;  // 512 MiB of doubles
struct GotDShardedResult {
  GotDResult result;  // duals: the last shard's
  int shards = 1;
  int max_iterations = 0;       // the most any shard needed
  double max_marginal_error = 0;
};
absl::StatusOr<GotDShardedResult> GotDSelectSharded(
    const std::vector<std::vector<float>>& candidates,
    const std::vector<std::vector<float>>& targets, const GotDOptions& options,
    int64_t shard_size, uint64_t seed);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_GOT_D_H_
