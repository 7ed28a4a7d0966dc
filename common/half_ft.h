// How many decoder-layer matrices HFT trains (METHODS.md §4.1, Lathe's
// definition; fine_tuning.proto's HalfFt): the rule lathed and the engine
// share, so that the memory lathed reserves and the set the engine trains
// are counted the same way. Torch- and proto-free.
#ifndef LATHE_COMMON_HALF_FT_H_
#define LATHE_COMMON_HALF_FT_H_

#include <cstdint>

namespace lathe {

// half_ft.fraction when a job sets none: half, METHODS.md's 2-of-4 and
// 2-or-1-of-3 rule.
inline constexpr double kDefaultHalfFtFraction = 0.5;

// Each decoder layer has 4 attention matrices (q, k, v, o) and 3 MLP ones
// (gate, up, down).
inline constexpr int64_t kAttentionMatrices = 4;
inline constexpr int64_t kMlpMatrices = 3;

// Over a model of L layers with fraction f, rounding to the nearest integer
// with halves down (R(x) = ⌈x − ½⌉):
//   total      R(f · 7L)   matrices trained in all
//   attention  R(f · 4L)   of them attention matrices
//   mlp        total − attention
// Each group is spread over the layers as evenly as it goes: every layer
// trains ⌊n/L⌋ of the group and n mod L layers one more. f = 0.5 gives 2
// attention matrices a layer, and 2 MLP matrices in ⌊L/2⌋ layers and 1 in
// the others (METHODS.md §4.1); f = 1 gives every matrix.
struct HalfFtMatrices {
  int64_t attention = 0;  // 2L at f = 0.5; 0..4L
  int64_t mlp = 0;        // ⌊1.5L⌋ at f = 0.5; 0..3L
  int64_t total() const { return attention + mlp; }
};

// REQUIRES: 0 < fraction <= 1, layers >= 0.
HalfFtMatrices HalfFtMatrixCounts(double fraction, int64_t layers);

}  // namespace lathe

#endif  // LATHE_COMMON_HALF_FT_H_
