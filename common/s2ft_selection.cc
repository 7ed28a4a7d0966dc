#include "common/s2ft_selection.h"

#include <algorithm>

#include "common/python_random.h"

namespace lathe {
namespace {

// random.sample(range(per_layer * layers), count), sorted, split by layer.
std::vector<std::vector<int64_t>> Draw(PythonRandom& random, int64_t layers,
                                       int64_t per_layer, double ratio) {
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(layers));
  const int64_t units = per_layer * layers;
  std::vector<int64_t> drawn =
      random.SampleRange(units, S2ftCount(units, ratio));
  std::sort(drawn.begin(), drawn.end());
  for (int64_t e : drawn) out[e / per_layer].push_back(e % per_layer);
  return out;
}

}  // namespace

int64_t S2ftSelection::Count() const {
  int64_t n = 0;
  for (const auto* group : {&v_heads, &o_heads, &up_channels, &down_channels}) {
    for (const std::vector<int64_t>& layer : *group)
      n += static_cast<int64_t>(layer.size());
  }
  return n;
}

int64_t S2ftCount(int64_t units, double ratio) {
  return static_cast<int64_t>(static_cast<double>(units) * ratio);
}

S2ftSelection SelectS2ft(const S2ftShape& shape, const S2ftRatios& ratios,
                         int64_t seed) {
  PythonRandom random(seed);
  S2ftSelection s;
  s.v_heads = Draw(random, shape.layers, shape.kv_heads, ratios.v_ratio);
  s.o_heads = Draw(random, shape.layers, shape.heads, ratios.o_ratio);
  s.up_channels =
      Draw(random, shape.layers, shape.intermediate, ratios.u_ratio);
  s.down_channels =
      Draw(random, shape.layers, shape.intermediate, ratios.d_ratio);
  return s;
}

}  // namespace lathe
