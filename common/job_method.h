// A job's training method on the wire (v1::Method): which one it is and
// where its hyperparameters are. Every reader of a job's settings (lathed's
// resolution, the worker's translation, the CLI) goes through these.
#ifndef LATHE_COMMON_JOB_METHOD_H_
#define LATHE_COMMON_JOB_METHOD_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lathe/v1/fine_tuning.pb.h"

namespace lathe {

// The method types, as Method.type spells them.
inline constexpr const char* kMethodTypes[] = {"supervised", "dpo", "orpo",
                                               "prompt_tuning", "rft", "spin"};

// method.type, with "" (auto, and jobs stored before the field was always
// set) read as "supervised".
std::string MethodType(const v1::Method& method);

// Whether the method trains on preference data (dpo, orpo).
bool IsPreferenceMethod(const std::string& type);
// Whether the method's steps run preference pairs (both rows of each):
// the preference methods, and SPIN on the pairs it generates.
bool TrainsOnPairs(const std::string& type);

// The hyperparameters of the method named by method.type; those of
// supervised for an unknown type.
const v1::Hyperparameters& MethodHyperparameters(const v1::Method& method);
v1::Hyperparameters* MutableMethodHyperparameters(v1::Method& method);

// "method.<type>.hyperparameters." for error messages ("supervised" for an
// unknown type).
std::string HyperparametersPrefix(const v1::Method& method);

// Every training mixture of a job or a create request (v1::Job,
// v1::CreateJobRequest), with the API field that holds it:
// "training_mixture" when set, then "stages[i].training_mixture" for each
// stage.
template <typename JobOrRequest>
std::vector<std::pair<std::string, const v1::Mixture*>> TrainingMixtures(
    const JobOrRequest& job) {
  std::vector<std::pair<std::string, const v1::Mixture*>> mixtures;
  if (job.has_training_mixture()) {
    mixtures.push_back({"training_mixture", &job.training_mixture()});
  }
  for (int i = 0; i < job.stages_size(); ++i) {
    mixtures.push_back({absl::StrCat("stages[", i, "].training_mixture"),
                        &job.stages(i).training_mixture()});
  }
  return mixtures;
}

}  // namespace lathe

#endif  // LATHE_COMMON_JOB_METHOD_H_
