// Data mixtures (METHODS.md §2.2): several training files, one example list,
// and what one epoch draws from each. Torch-free.
//
// The sources' examples are laid end to end (source 0's first); an epoch is
// a list of indices into that list, drawn by DrawEpoch and then read in
// micro-batches by the data cursor (data/cursor.h), which saves the epoch's
// list and its generator in checkpoints: a resumed run draws the same
// sequence. What an epoch holds:
//   - each source drawn by the strategy ("proportion" 0) contributes
//       concat:      all of its examples;
//       weighted / temperature: its share of `drawn` draws, each draw
//                    picking source i with probability p_i (weighted:
//                    w_i / sum w; temperature: n_i^(1/T) / sum n_j^(1/T));
//                    drawn = min_i floor(n_i / p_i) for stop
//                    "first_exhausted", max_i ceil(n_i / p_i) for
//                    "all_exhausted";
//   - each source with a proportion r (a general-data regulariser) exactly
//     round(r / (1 - R) * D) examples, where D is what the drawn sources
//     contribute and R the sum of the proportions: r of the epoch.
// A source's examples within an epoch come from successive seeded shuffles
// of it (without replacement until it runs out, then again), and the epoch
// is shuffled as a whole.
#ifndef LATHE_WORKER_ENGINE_DATA_MIXTURE_H_
#define LATHE_WORKER_ENGINE_DATA_MIXTURE_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// How an epoch draws from the sources; constant for a run.
struct MixturePlan {
  struct Source {
    size_t offset = 0;          // its first example in the list
    size_t size = 0;            // its examples (after subsampling)
    bool proportional = false;  // a source with a proportion
    double probability = 0;     // per draw (weighted / temperature)
    size_t fixed = 0;           // examples per epoch if proportional
  };
  std::vector<Source> sources;
  bool concat = false;  // drawn sources contribute all their examples
  size_t drawn = 0;     // draws by probability per epoch (not concat)

  // The examples of one epoch (the same for every epoch).
  size_t EpochSize() const;
};

// The plan for sources of `sizes` examples under `spec` (valid, with
// sources; sizes non-zero, one per source).
MixturePlan PlanMixture(const MixtureSpec& spec,
                        const std::vector<size_t>& sizes);

// One epoch: EpochSize() indices into the example list.
std::vector<size_t> DrawEpoch(const MixturePlan& plan, std::mt19937_64& rng);

// floor(fraction * n) distinct indices of [0, n), drawn without replacement
// by `seed`, in increasing order (so the subsample keeps the file's order).
std::vector<size_t> Subsample(size_t n, double fraction, uint64_t seed);

// The training data of a mixture run.
struct MixtureData {
  std::vector<Example> examples;  // the sources end to end
  MixturePlan plan;
  int64_t truncated = 0;  // examples cut to max_seq_len
};

// Loads every source of data.mixture (as LoadChatDataset, errors naming the
// source's file_name) and subsamples each by its fraction, seeded by `seed`
// and the source's index. INVALID_ARGUMENT as LoadChatDataset, or naming
// data.mixture.sources[i].fraction when it leaves no example.
absl::StatusOr<MixtureData> LoadMixture(
    const DataSpec& data, const Tokenizer& tokenizer,
    const absl::StatusOr<ChatTemplate>& chat_template, uint64_t seed);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_MIXTURE_H_
