// Where a run stands in its data: this epoch's shuffled order of the
// examples and the next one to read. Saved in checkpoints
// (checkpoint/run_checkpoint.h), so a resumed run reads what the
// uninterrupted one would have.
#ifndef LATHE_WORKER_ENGINE_DATA_CURSOR_H_
#define LATHE_WORKER_ENGINE_DATA_CURSOR_H_

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <random>
#include <vector>

namespace lathe::engine {

struct DataCursor {
  std::mt19937_64 rng;
  std::vector<size_t> order;  // a permutation of the examples
  int epoch = 0;
  size_t next = 0;

  // A cursor at the start of the first epoch over `examples` examples,
  // shuffled by `seed`.
  static DataCursor Start(size_t examples, uint64_t seed) {
    DataCursor cursor{.rng = std::mt19937_64(seed),
                      .order = std::vector<size_t>(examples)};
    cursor.Shuffle();
    return cursor;
  }

  void Shuffle() {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
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
