#include "common/job_method.h"

#include "absl/strings/str_cat.h"

namespace lathe {

std::string MethodType(const v1::Method& method) {
  return method.type().empty() ? "supervised" : method.type();
}

bool IsPreferenceMethod(const std::string& type) {
  return type == "dpo" || type == "orpo";
}

bool TrainsOnPairs(const std::string& type) {
  return IsPreferenceMethod(type) || type == "spin";
}

const v1::Hyperparameters& MethodHyperparameters(const v1::Method& method) {
  const std::string type = MethodType(method);
  if (type == "dpo") return method.dpo().hyperparameters();
  if (type == "orpo") return method.orpo().hyperparameters();
  if (type == "prompt_tuning") return method.prompt_tuning().hyperparameters();
  if (type == "rft") return method.rft().hyperparameters();
  if (type == "spin") return method.spin().hyperparameters();
  return method.supervised().hyperparameters();
}

v1::Hyperparameters* MutableMethodHyperparameters(v1::Method& method) {
  const std::string type = MethodType(method);
  if (type == "dpo") return method.mutable_dpo()->mutable_hyperparameters();
  if (type == "orpo") return method.mutable_orpo()->mutable_hyperparameters();
  if (type == "prompt_tuning") {
    return method.mutable_prompt_tuning()->mutable_hyperparameters();
  }
  if (type == "rft") return method.mutable_rft()->mutable_hyperparameters();
  if (type == "spin") return method.mutable_spin()->mutable_hyperparameters();
  return method.mutable_supervised()->mutable_hyperparameters();
}

std::string HyperparametersPrefix(const v1::Method& method) {
  const std::string type = MethodType(method);
  const bool known = type == "dpo" || type == "orpo" ||
                     type == "prompt_tuning" || type == "rft" || type == "spin";
  return absl::StrCat("method.", known ? type : "supervised",
                      ".hyperparameters.");
}

}  // namespace lathe
