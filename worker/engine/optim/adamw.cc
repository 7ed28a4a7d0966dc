#include "worker/engine/optim/adamw.h"

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lathe::engine {

AdamW::AdamW(std::vector<Param> params, const AdamWOptions& options)
    : params_(std::move(params)), options_(options) {
  for (const Param& p : params_) {
    exp_avg_.push_back(torch::zeros_like(p.value));
    exp_avg_sq_.push_back(torch::zeros_like(p.value));
    param_steps_.push_back(0);
  }
}

void AdamW::SetParams(std::vector<Param> params) {
  std::map<std::string, size_t> old;
  for (size_t i = 0; i < params_.size(); ++i) old[params_[i].name] = i;
  std::vector<torch::Tensor> avg, avg_sq;
  std::vector<int64_t> counts;
  for (const Param& p : params) {
    auto it = old.find(p.name);
    if (it != old.end()) {
      avg.push_back(std::move(exp_avg_[it->second]));
      avg_sq.push_back(std::move(exp_avg_sq_[it->second]));
      counts.push_back(param_steps_[it->second]);
    } else {
      avg.push_back(torch::zeros_like(p.value));
      avg_sq.push_back(torch::zeros_like(p.value));
      counts.push_back(0);
    }
  }
  params_ = std::move(params);
  exp_avg_ = std::move(avg);
  exp_avg_sq_ = std::move(avg_sq);
  param_steps_ = std::move(counts);
}

void AdamW::ZeroGrad() {
  for (Param& p : params_) {
    if (p.value.grad().defined()) p.value.mutable_grad().reset();
  }
}

void AdamW::Step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  // The same operations, in the same order, as torch's single-tensor AdamW.
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor& p = params_[i].value;
    const torch::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    const int64_t step = ++param_steps_[i];
    const double bias_correction1 = 1 - std::pow(options_.beta1, step);
    const double bias_correction2 = 1 - std::pow(options_.beta2, step);
    const double step_size = lr / bias_correction1;
    if (params_[i].decay) p.mul_(1 - lr * options_.weight_decay);
    exp_avg_[i].mul_(options_.beta1).add_(grad, 1 - options_.beta1);
    exp_avg_sq_[i]
        .mul_(options_.beta2)
        .addcmul_(grad, grad, 1 - options_.beta2);
    torch::Tensor denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bias_correction2))
                              .add_(options_.eps);
    p.addcdiv_(exp_avg_[i], denom, -step_size);
  }
}

TensorMap AdamW::State() const {
  TensorMap state;
  for (size_t i = 0; i < params_.size(); ++i) {
    state["exp_avg/" + params_[i].name] = exp_avg_[i];
    state["exp_avg_sq/" + params_[i].name] = exp_avg_sq_[i];
    state["step/" + params_[i].name] =
        torch::tensor(static_cast<float>(param_steps_[i]));
  }
  return state;
}

absl::Status AdamW::Restore(int64_t steps, const TensorMap& state) {
  auto find = [&](const std::string& key,
                  const torch::Tensor& like) -> absl::StatusOr<torch::Tensor> {
    auto it = state.find(key);
    if (it == state.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer tensor \"", key, "\" is missing"));
    }
    if (!it->second.sizes().equals(like.sizes())) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer tensor \"", key, "\" has shape [",
                       absl::StrJoin(it->second.sizes(), ", "), "], expected [",
                       absl::StrJoin(like.sizes(), ", "), "]"));
    }
    return it->second.to(like.device(), torch::kFloat32).clone();
  };
  std::vector<torch::Tensor> avg, avg_sq;
  std::vector<int64_t> counts;
  for (const Param& p : params_) {
    auto count = state.find("step/" + p.name);
    counts.push_back(count == state.end()
                         ? steps
                         : static_cast<int64_t>(count->second.item<float>()));
    absl::StatusOr<torch::Tensor> m = find("exp_avg/" + p.name, p.value);
    if (!m.ok()) return m.status();
    absl::StatusOr<torch::Tensor> v = find("exp_avg_sq/" + p.name, p.value);
    if (!v.ok()) return v.status();
    avg.push_back(*std::move(m));
    avg_sq.push_back(*std::move(v));
  }
  steps_ = steps;
  exp_avg_ = std::move(avg);
  exp_avg_sq_ = std::move(avg_sq);
  param_steps_ = std::move(counts);
  return absl::OkStatus();
}

std::vector<torch::Tensor> AdamW::tensors() const {
  std::vector<torch::Tensor> out;
  for (const Param& p : params_) out.push_back(p.value);
  return out;
}

}  // namespace lathe::engine
