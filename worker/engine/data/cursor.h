// Where a run stands in its data: this epoch's shuffled order of the
// examples (or, for a mixture, its draws: data/mixture.h) and the next one
// to read. Saved in checkpoints
// (checkpoint/run_checkpoint.h), so a resumed run reads what the
// uninterrupted one would have.
#ifndef LATHE_WORKER_ENGINE_DATA_CURSOR_H_
#define LATHE_WORKER_ENGINE_DATA_CURSOR_H_

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <random>
#include <vector>

#include "worker/engine/data/mixture.h"

namespace lathe::engine {

struct DataCursor {
  std::mt19937_64 rng;
  // A permutation of the examples; for a mixture, the epoch's draws.
  std::vector<size_t> order;
  int epoch = 0;
  size_t next = 0;
  size_t examples = 0;  // the examples order indexes into
  // How a mixture's epochs are drawn; null for one file. Must outlive the
  // cursor.
  const MixturePlan* mixture = nullptr;

  // A cursor at the start of the first epoch over `examples` examples,
  // shuffled by `seed`; drawn by `mixture` when not null (its EpochSize()
  // draws per epoch).
  static DataCursor Start(size_t examples, uint64_t seed,
                          const MixturePlan* mixture = nullptr) {
    DataCursor cursor{
        .rng = std::mt19937_64(seed),
        .order = std::vector<size_t>(mixture != nullptr ? mixture->EpochSize()
                                                        : examples),
        .examples = examples,
        .mixture = mixture};
    cursor.Shuffle();
    return cursor;
  }

  void Shuffle() {
    if (mixture != nullptr) {
      order = DrawEpoch(*mixture, rng);
    } else {
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
    }
    next = 0;
  }

  // The examples of the next optimizer step: up to `micro_batches` batches
  // of `batch_size`, never crossing the end of the epoch.
  std::vector<std::vector<size_t>> TakeStep(int batch_size, int micro_batches) {
    std::vector<std::vector<size_t>> batches;
    for (int i = 0; i < micro_batches && next < order.size(); ++i) {
      const size_t end = std::min(order.size(), next + batch_size);
      batches.emplace_back(order.begin() + next, order.begin() + end);
      next = end;
    }
    if (next == order.size()) {
      ++epoch;
      Shuffle();
    }
    return batches;
  }
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_CURSOR_H_
