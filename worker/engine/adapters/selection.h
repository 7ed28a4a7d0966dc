// Which of a model's tensors a full fine-tuning run trains, step by step:
// the run spec's "trainable" section (METHODS.md §2.3 coarse level, §4).
//   - layers / modules: a fixed set, CoFiTune's coarse level. A tensor
//     "model.layers.{l}.<path>" is trained when l is one of the layers (all
//     when none is named) and <path> has one of the modules as a dotted
//     component (all when none is named); embeddings, norms outside the
//     layers and the head stay frozen.
//   - lisa: every interval_steps optimizer steps, from step 0, LISA draws
//     activated_layers distinct decoder layers, uniformly: a std::shuffle of
//     0..L-1 by a std::mt19937_64 seeded with std::seed_seq{low 32 bits of
//     the run's seed, high 32 bits, 0x4C495341}, whose first
//     activated_layers entries are the draw (one generator for the whole
//     run). The embeddings, final norm and head are trained always.
//   - half_ft (HFT, METHODS.md §4.1's Lathe definition): a = R(f·4L)
//     attention and m = R(f·7L) − a MLP matrices of the L layers, for
//     fraction f (common/half_ft.h: R rounds to nearest, halves down); a
//     projection's bias goes with its matrix. Drawn by a std::mt19937_64
//     seeded with std::seed_seq{low, high 32 bits of half_ft.seed (the
//     run's seed when 0), selection number}: a shuffle of the layers, then
//     per layer a shuffle of {q,k,v,o} and one of {gate,up,down}, whose
//     first entries are trained: ⌊a/L⌋ attention matrices, one more in the
//     last a mod L layers of the layer shuffle, and ⌊m/L⌋ MLP matrices, one
//     more in its first m mod L layers (so that the extras fall on
//     different layers where they can). At f = 0.5 that is 2 of 4 attention
//     matrices a layer, 2 of 3 MLP matrices in ⌊L/2⌋ layers and 1 in the
//     others. The selection number is the stage for reselect "stage" (one
//     draw per stage: the whole run unless it has data.stages), the epoch
//     for "epoch". The layers' norms stay frozen; the embeddings, final norm
//     and head too unless include_embeddings, which trains them always.
// Tensors outside the selection get no gradient and are left bit-identical.
// The state (the current set, LISA's generator and draws, HFT's selections)
// is a JSON value a checkpoint carries, so that a resumed run continues
// with exactly the selections the uninterrupted run makes; the same value is
// the run's selection manifest.
//
// Thread-compatible. The model is borrowed: it must outlive the selection.
#ifndef LATHE_WORKER_ENGINE_ADAPTERS_SELECTION_H_
#define LATHE_WORKER_ENGINE_ADAPTERS_SELECTION_H_

#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model/llama.h"
#include "worker/engine/spec/run_spec.h"

namespace lathe::engine {

// The file beside a run's result that holds its selection's final
// State(): the manifest of what was trained.
inline constexpr char kSelectionManifest[] = "trainable_selection.json";

class TrainableSelection {
 public:
  // A selection of `model`'s tensors by `spec` (REQUIRES: spec.Selects()).
  // INVALID_ARGUMENT naming the field when it does not fit the model: a
  // layer past the last ("trainable.layers"), more LISA layers than the
  // model has ("trainable.lisa.activated_layers"), an HFT fraction that
  // rounds to no matrix ("trainable.half_ft.fraction"), or a set that
  // trains no tensor.
  static absl::StatusOr<std::unique_ptr<TrainableSelection>> Create(
      const TrainableSpec& spec, const LlamaModel& model, uint64_t run_seed);

  // Brings the selection to optimizer step `step` (0-based) of `epoch`
  // (counted across the stages) of `stage` (0-based, data.stages): LISA
  // draws when step % interval_steps == 0, HFT with reselect "epoch" draws
  // for a new epoch and with reselect "stage" for a new stage, and the
  // first call draws (or fixes) the first set. REQUIRES: steps in
  // increasing order. Returns whether the trained set changed.
  bool Advance(int64_t step, int epoch, int stage = 0);

  // The names (as LlamaModel::Weights names them) of the tensors trained
  // now; empty before the first Advance or Restore.
  const std::set<std::string>& trained() const { return trained_; }

  // Sets requires_grad on the trained tensors of `model` and clears it on
  // the others, dropping their gradients.
  void Apply(const LlamaModel& model) const;

  // The state: {"kind": "layers" | "lisa" | "half_ft", "trained": [names],
  // "trained_parameters": n, "model_parameters": N, "trained_fraction":
  // n / N, and for LISA "rng" (the generator, as << writes it) and "draws"
  // [{"step": 0, "layers": [2]}, ...], for HFT "selections" [{"epoch": 0,
  // "tensors": [names]}, ...] and "matrix_fraction" (the trained share of
  // the decoder layers' projection matrices' parameters)}.
  nlohmann::json State() const;

  // Continues from State() of a run with the same spec and model.
  // DATA_LOSS naming the field when `state` is not such a state.
  absl::Status Restore(const nlohmann::json& state);

 private:
  TrainableSelection(const TrainableSpec& spec, const LlamaModel& model,
                     uint64_t run_seed);

  std::set<std::string> LisaSet(const std::vector<int>& layers) const;
  std::set<std::string> HalfFtSet(int selection) const;

  // Constant after construction.
  const TrainableSpec spec_;
  const LlamaModel& model_;
  const uint64_t seed_;          // LISA: the run's; HFT: half_ft.seed or it
  std::set<std::string> fixed_;  // layers / modules: the set

  std::set<std::string> trained_;
  bool started_ = false;
  std::mt19937_64 lisa_rng_;
  nlohmann::json draws_ = nlohmann::json::array();       // LISA
  nlohmann::json selections_ = nlohmann::json::array();  // HFT
  int selection_epoch_ = -1;                             // HFT
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ADAPTERS_SELECTION_H_
