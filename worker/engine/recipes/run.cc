#include "worker/engine/recipes/run.h"

#include <torch/torch.h>

#include <variant>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/error_kind.h"
#include "worker/engine/recipes/preference.h"
#include "worker/engine/recipes/rft.h"
#include "worker/engine/recipes/sft.h"

namespace lathe::engine {

absl::StatusOr<TrainResult> Train(const RunSpec& spec,
                                  const TrainHooks& hooks) {
  try {
    absl::Status valid = ValidateRunSpec(spec);
    if (!valid.ok()) return WithErrorKind(valid, ErrorKind::kUserOptions);
    // One recipe per objective.
    return std::visit(
        [&](const auto& objective) -> absl::StatusOr<TrainResult> {
          using Objective = std::decay_t<decltype(objective)>;
          if constexpr (std::is_same_v<Objective, SftSpec>) {
            if (spec.self_training.iterations > 0) {
              return RunSelfTraining(spec, hooks);
            }
            return RunSft(spec, objective, hooks);
          } else if constexpr (std::is_same_v<Objective, DpoSpec>) {
            if (spec.self_training.iterations > 0) {
              return RunSelfTraining(spec, hooks);
            }
            return RunDpo(spec, objective, hooks);
          } else {
            static_assert(std::is_same_v<Objective, OrpoSpec>);
            return RunOrpo(spec, objective, hooks);
          }
        },
        spec.objective);
  } catch (const c10::OutOfMemoryError& e) {
    return WithErrorKind(
        absl::ResourceExhaustedError(absl::StrCat(
            "out_of_memory: the device ran out of memory (",
            spec.data.batch_size, " examples of up to ", spec.data.max_seq_len,
            " tokens per micro-batch); use a smaller batch_size or "
            "max_seq_len, or gradient accumulation")),
        ErrorKind::kUserOptions,
        absl::StrCat(HyperparametersField(spec.objective), ".batch_size"));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("LibTorch error: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what()));
  }
}

}  // namespace lathe::engine
