// Prompt tuning (Lester et al., 2021) in PEFT's PROMPT_TUNING layout
// (METHODS.md §10, peft v0.20.0): N trained virtual-token embeddings
// [N, hidden] placed before every example; the whole model stays frozen.
//
// In the engine the virtual tokens are the model's prompt embeddings
// (LlamaModel::SetPromptEmbeddings): every example starts with N
// placeholder tokens (PrependVirtualTokens), which the model embeds as the
// prompt's rows, at positions 0..N-1, the example's own tokens following at
// N.. (PEFT drops user position ids, so its positions are the same), with
// no loss on them. The saved folder is PEFT's: adapter_config.json
// (peft_type PROMPT_TUNING) and adapter_model.safetensors holding exactly
// one tensor, "prompt_embeddings" [N, hidden], float32.
#ifndef LATHE_WORKER_ENGINE_ADAPTERS_PROMPT_TUNING_H_
#define LATHE_WORKER_ENGINE_ADAPTERS_PROMPT_TUNING_H_

#include <torch/torch.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/spec/run_spec.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {

// Fresh prompt embeddings on the model's device, float32, trainable:
// "random" draws N(0, 1) from torch's generator; "sample_vocab" the
// embedding rows of N ids drawn uniformly from the vocabulary; "text" the
// rows of init_text's tokens (with the tokenizer's special tokens, as
// PEFT), cut to N or repeated cyclically up to N. `tokenizer` is needed for
// "text" only (FAILED_PRECONDITION without one). INVALID_ARGUMENT naming
// adapter.init_text when the text has no token.
absl::Status AttachPromptTuning(LlamaModel& model, const PromptTuningSpec& spec,
                                const Tokenizer* tokenizer);

// Every example with `n` placeholder tokens (id 0, no loss) in front, for a
// model with n virtual tokens.
void PrependVirtualTokens(std::vector<Example>& examples, int n);

// Writes `dir`/adapter_config.json and adapter_model.safetensors.
absl::Status SavePromptTuning(const LlamaModel& model,
                              const PromptTuningSpec& spec,
                              const std::string& base_model_name,
                              const std::string& dir);

// Reads a PEFT PROMPT_TUNING folder into `model`'s prompt embeddings.
// INVALID_ARGUMENT naming the file and field (not PROMPT_TUNING, a key set
// other than {"prompt_embeddings"}, a shape other than [N, hidden]).
absl::StatusOr<PromptTuningSpec> LoadPromptTuning(LlamaModel& model,
                                                  const std::string& dir);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_ADAPTERS_PROMPT_TUNING_H_
