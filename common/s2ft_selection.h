// S²FT's choice of what a run trains (METHODS.md §6.1; Yang et al.,
// NeurIPS 2024, Infini-AI-Lab/S2FT experiments/train/finetune.py): random
// and model-wide from one seed, as the reference draws it. After
// random.seed(seed) (Python's, common/python_random.h), in this order:
//   v: int(H_kv·L·v_ratio) of the (layer, KV head) pairs  -> v_proj rows
//   o: int(H·L·o_ratio) of the (layer, query head) pairs  -> o_proj columns
//   u: int(I·L·u_ratio) of the (layer, FFN channel) pairs -> up_proj rows
//   d: int(I·L·d_ratio) of the (layer, FFN channel) pairs -> down_proj cols
// each one random.sample(range(n·L), count) whose entry e is unit e mod n of
// layer e div n; so the per-layer counts vary. For a multi-head model
// (H_kv = H) this is the reference's selection exactly; with grouped-query
// attention the reference's own scripts train down_proj only (its head
// permutation is MHA-only), and Lathe draws v_proj per KV head (whose rows
// every query head of the group reads) and o_proj per query head. Torch-
// and proto-free.
#ifndef LATHE_COMMON_S2FT_SELECTION_H_
#define LATHE_COMMON_S2FT_SELECTION_H_

#include <cstdint>
#include <string>
#include <vector>

namespace lathe {

struct S2ftRatios {
  double v_ratio = 0;
  double o_ratio = 0;
  double u_ratio = 0;
  double d_ratio = 0;
};

struct S2ftShape {
  int64_t layers = 0;
  int64_t heads = 0;     // query heads
  int64_t kv_heads = 0;  // key/value heads
  int64_t intermediate = 0;
};

// The selected units of every layer, ascending.
struct S2ftSelection {
  std::vector<std::vector<int64_t>> v_heads;        // [layer] -> KV heads
  std::vector<std::vector<int64_t>> o_heads;        // [layer] -> query heads
  std::vector<std::vector<int64_t>> up_channels;    // [layer] -> FFN channels
  std::vector<std::vector<int64_t>> down_channels;  // [layer] -> FFN channels

  int64_t Count() const;  // units selected in all
};

// How many of `units` pairs a ratio selects: int(units * ratio), Python's
// truncation of the double product.
int64_t S2ftCount(int64_t units, double ratio);

// The selection for `shape`. REQUIRES: each ratio in [0, 1], shape's
// counts positive.
S2ftSelection SelectS2ft(const S2ftShape& shape, const S2ftRatios& ratios,
                         int64_t seed);

}  // namespace lathe

#endif  // LATHE_COMMON_S2FT_SELECTION_H_
