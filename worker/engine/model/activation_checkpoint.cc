#include "worker/engine/model/activation_checkpoint.h"

#include <mutex>

namespace lathe::engine {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Fn = std::function<torch::Tensor(const torch::Tensor&)>;

// What backward needs besides the saved input: the function and the
// generator's state before the forward.
struct Recompute : torch::CustomClassHolder {
  Fn fn;
  at::Generator generator;
  torch::Tensor rng_state;
};

torch::Tensor GetRngState(at::Generator& generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void SetRngState(at::Generator& generator, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

// The input is the only tensor argument: autograd connects the gradient of
// x; the parameters get theirs from the inner backward in backward().
// `anchor` is a tensor that requires grad, so that the node is recorded
// even when x itself does not (the first layer of a LoRA run).
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& anchor, Fn fn,
                               at::Generator generator) {
    auto recompute = c10::make_intrusive<Recompute>();
    recompute->fn = std::move(fn);
    recompute->generator = generator.defined()
                               ? std::move(generator)
                               : at::globalContext().defaultGenerator(x.device());
    recompute->rng_state = GetRngState(recompute->generator);
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(recompute);
    ctx->save_for_backward({x});
    torch::NoGradGuard no_grad;
    return {recompute->fn(x)};
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    auto recompute = c10::static_intrusive_pointer_cast<Recompute>(
        ctx->saved_data["recompute"].toCapsule());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    torch::Tensor input = x.detach().requires_grad_(x.requires_grad());
    const torch::Tensor now = GetRngState(recompute->generator);
    SetRngState(recompute->generator, recompute->rng_state);
    torch::Tensor out;
    {
      torch::AutoGradMode enable_grad(true);
      out = recompute->fn(input);
    }
    SetRngState(recompute->generator, now);
    torch::autograd::backward({out}, {grad_outputs[0]});
    return {x.requires_grad() ? input.grad() : torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Checkpointed(Fn fn, const torch::Tensor& x,
                           at::Generator generator) {
  if (!torch::GradMode::is_enabled()) return fn(x);
  // A leaf that requires grad and receives none: it only makes autograd
  // record the node when x does not require grad.
  static const torch::Tensor anchor =
      torch::zeros({}, torch::kFloat32).requires_grad_(true);
  return CheckpointFunction::apply(x, anchor, std::move(fn),
                                   std::move(generator))[0];
}

}  // namespace lathe::engine
