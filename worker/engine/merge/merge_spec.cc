#include "worker/engine/merge/merge_spec.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/model/model_config.h"

namespace lathe::engine {
namespace {

constexpr std::pair<MergeMethod, absl::string_view> kMethodNames[] = {
    {MergeMethod::kLinear, "linear"},
    {MergeMethod::kTaskArithmetic, "task_arithmetic"},
    {MergeMethod::kTies, "ties"},
    {MergeMethod::kDareLinear, "dare_linear"},
    {MergeMethod::kDareTies, "dare_ties"},
    {MergeMethod::kBreadcrumbs, "breadcrumbs"},
    {MergeMethod::kLines, "lines"},
    {MergeMethod::kGreedySoup, "greedy_soup"},
};

constexpr std::pair<MajoritySign, absl::string_view> kSignNames[] = {
    {MajoritySign::kTotal, "total"},
    {MajoritySign::kFrequency, "frequency"},
};

template <typename Enum, size_t N>
absl::StatusOr<Enum> FromName(
    const std::pair<Enum, absl::string_view> (&names)[N],
    absl::string_view name, absl::string_view field) {
  std::vector<std::string> known;
  for (const auto& [value, text] : names) {
    if (text == name) return value;
    known.emplace_back(text);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("field \"", field, "\" must be one of ",
                   absl::StrJoin(known, ", "), ", not \"", name, "\""));
}

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("field \"merge.", field, "\" ", problem));
}

bool InUnitInterval(double x) { return x >= 0 && x <= 1; }

}  // namespace

absl::StatusOr<MergeMethod> ParseMergeMethod(absl::string_view name) {
  return FromName(kMethodNames, name, "merge.method");
}

absl::string_view MergeMethodName(MergeMethod method) {
  for (const auto& [value, text] : kMethodNames) {
    if (value == method) return text;
  }
  return "";
}

absl::StatusOr<MajoritySign> ParseMajoritySign(absl::string_view name) {
  return FromName(kSignNames, name, "merge.majority_sign");
}

absl::string_view MajoritySignName(MajoritySign sign) {
  for (const auto& [value, text] : kSignNames) {
    if (value == sign) return text;
  }
  return "";
}

absl::Status Validate(const MergeSpec& spec) {
  const MergeParams& p = spec.params;
  const MergeMethod m = p.method;
  if (spec.base_dir.empty()) return FieldError("base_dir", "is required");
  if (spec.output_dir.empty()) return FieldError("output_dir", "is required");
  if (spec.inputs.empty()) return FieldError("inputs", "needs at least one");
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    if (spec.inputs[i].dir.empty()) {
      return FieldError(absl::StrCat("inputs[", i, "].dir"), "is required");
    }
  }
  if (!p.weights.empty()) {
    if (m == MergeMethod::kGreedySoup) {
      return FieldError("weights", "must be empty for greedy_soup (uniform)");
    }
    if (p.weights.size() != spec.inputs.size()) {
      return FieldError("weights",
                        absl::StrCat("has ", p.weights.size(), " values for ",
                                     spec.inputs.size(), " inputs"));
    }
    if (!std::all_of(p.weights.begin(), p.weights.end(),
                     [](double w) { return std::isfinite(w); })) {
      return FieldError("weights", "must be finite");
    }
  }
  if (m == MergeMethod::kLinear) {
    double sum = 0;
    for (double w : InputWeights(spec)) sum += w;
    if (sum == 0) return FieldError("weights", "must not sum to 0 for linear");
  }
  if (!std::isfinite(p.lambda)) return FieldError("lambda", "must be finite");
  if (p.lambda != 1 && (m == MergeMethod::kLinear || m == MergeMethod::kLines ||
                        m == MergeMethod::kGreedySoup)) {
    return FieldError("lambda",
                      absl::StrCat("must be 1 for ", MergeMethodName(m)));
  }
  if (!InUnitInterval(p.density)) {
    return FieldError("density", "must be in [0, 1]");
  }
  if (p.density == 0 &&
      (m == MergeMethod::kDareLinear || m == MergeMethod::kDareTies)) {
    return FieldError("density", "must be above 0 for DARE (it divides by it)");
  }
  if (!InUnitInterval(p.beta)) return FieldError("beta", "must be in [0, 1]");
  if (!InUnitInterval(p.gamma)) return FieldError("gamma", "must be in [0, 1]");
  if (!std::isfinite(p.lines_alpha)) {
    return FieldError("lines_alpha", "must be finite");
  }
  if (!std::isfinite(p.lines_beta)) {
    return FieldError("lines_beta", "must be finite");
  }
  if (!spec.lora.dir.empty()) {
    if (spec.lora.rank <= 0) return FieldError("lora.rank", "must be positive");
    for (const std::string& module : spec.lora.target_modules) {
      if (std::find(std::begin(kProjectionNames), std::end(kProjectionNames),
                    module) == std::end(kProjectionNames)) {
        return FieldError(
            "lora.target_modules",
            absl::StrCat("has \"", module, "\", which is not a projection"));
      }
    }
  }
  if (m == MergeMethod::kGreedySoup) {
    if (spec.soup.validation_file.empty()) {
      return FieldError("soup.validation_file", "is required for greedy_soup");
    }
    if (spec.soup.max_seq_len < 2) {
      return FieldError("soup.max_seq_len", "must be at least 2");
    }
  }
  return absl::OkStatus();
}

std::vector<double> InputWeights(const MergeSpec& spec) {
  return spec.params.weights.empty()
             ? std::vector<double>(spec.inputs.size(), 1.0)
             : spec.params.weights;
}

}  // namespace lathe::engine
