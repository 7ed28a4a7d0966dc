// Activation checkpointing: run a function of one tensor (a decoder layer)
// without keeping its intermediate activations, and recompute them in the
// backward pass. LibTorch has no C++ torch.utils.checkpoint; this is its
// reentrant variant, as a custom autograd function.
#ifndef LATHE_WORKER_ENGINE_MODEL_ACTIVATION_CHECKPOINT_H_
#define LATHE_WORKER_ENGINE_MODEL_ACTIVATION_CHECKPOINT_H_

#include <torch/torch.h>

#include <functional>

namespace lathe::engine {

// Returns fn(x), keeping only x for the backward pass. Backward recomputes
// fn(x) with gradients enabled and `generator` (the one fn's dropout draws
// from; undefined: the default generator of x's device) set back to its
// state before the first call (so a dropout inside draws the same mask;
// torch.utils.checkpoint's preserve_rng_state), then
// back-propagates through it: the gradient of x is returned and the
// gradients of the leaf tensors fn uses (its parameters) are accumulated
// into their .grad, as a backward without checkpointing would.
//
// With gradients disabled this is simply fn(x).
// The backward pass owns fn until it has run: what fn captures by reference
// must outlive it. REQUIRES: fn is deterministic given x and the generator's
// state; the trainable tensors fn reads are leaves.
torch::Tensor Checkpointed(
    std::function<torch::Tensor(const torch::Tensor&)> fn,
    const torch::Tensor& x, at::Generator generator = at::Generator());

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_MODEL_ACTIVATION_CHECKPOINT_H_
