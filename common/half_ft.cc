#include "common/half_ft.h"

#include <cmath>

namespace lathe {
namespace {

// Nearest, halves down: at f = 0.5 an odd layer count gives 3.5L = k + ½,
// and k keeps METHODS.md's ⌊L/2⌋ layers with 2 MLP matrices.
int64_t RoundHalfDown(double x) {
  return static_cast<int64_t>(std::ceil(x - 0.5));
}

}  // namespace

HalfFtMatrices HalfFtMatrixCounts(double fraction, int64_t layers) {
  const int64_t total = RoundHalfDown(
      fraction *
      static_cast<double>((kAttentionMatrices + kMlpMatrices) * layers));
  const int64_t attention = RoundHalfDown(
      fraction * static_cast<double>(kAttentionMatrices * layers));
  // R is monotone and R(x + n) = R(x) + n for an integer n, so
  // 0 <= total - attention <= 3L.
  return {.attention = attention, .mlp = total - attention};
}

}  // namespace lathe
