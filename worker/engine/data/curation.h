// Data curation before training (METHODS.md §8): per-example facts a user
// wants before spending device time on a file: its token count and
// truncation, exact and near duplicates within the file (MinHash over
// token shingles, Broder 1997, with LSH banding to find the candidates),
// and overlap with a validation file. Torch-free; the base model's loss
// per example is the caller's (reports/reports.h HeldOutLossOf).
#ifndef LATHE_WORKER_ENGINE_DATA_CURATION_H_
#define LATHE_WORKER_ENGINE_DATA_CURATION_H_

#include <cstdint>
#include <vector>

namespace lathe::engine {

struct MinHashOptions {
  int shingle = 5;         // tokens per shingle (a shorter text: one shingle)
  int num_hashes = 128;    // signature length = bands x rows
  int bands = 32;          // LSH: candidates share one band's rows exactly
  double threshold = 0.8;  // estimated Jaccard at which a pair is "near"
  uint64_t seed = 0;
};

// The MinHash signature of `ids`' set of `shingle`-token shingles: for each
// of num_hashes seeded 64-bit hash functions, the least hash over the set.
std::vector<uint64_t> MinHashSignature(const std::vector<int32_t>& ids,
                                       const MinHashOptions& options);

// The estimated Jaccard similarity of two signatures: the share of equal
// components.
double EstimatedJaccard(const std::vector<uint64_t>& a,
                        const std::vector<uint64_t>& b);

// What curation found about one example.
struct DuplicateInfo {
  int64_t exact_of = -1;  // the first earlier example with the same ids
  int64_t near_of = -1;   // the earlier example most similar at >= threshold
  double near_jaccard = 0;
  int64_t validation_exact = -1;  // a validation example with the same ids
  int64_t validation_near = -1;   // the most similar at >= threshold
  double validation_jaccard = 0;
};

// For each example of `train` (token ids): its exact and near duplicates
// among the earlier ones, and its overlap with `validation`. An exact
// duplicate is not also reported as near.
std::vector<DuplicateInfo> FindDuplicates(
    const std::vector<std::vector<int32_t>>& train,
    const std::vector<std::vector<int32_t>>& validation,
    const MinHashOptions& options);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_CURATION_H_
