// A self-contained demo: a tiny random Llama with a SentencePiece tokenizer
// trained on a small, learnable chat data set. Torch-free, deterministic.
#ifndef LATHE_WORKER_ENGINE_CLI_DEMO_H_
#define LATHE_WORKER_ENGINE_CLI_DEMO_H_

#include <string>

#include "absl/status/status.h"

namespace lathe::engine {

// Writes into `out_dir` (created if needed):
//   model/       config.json, model.safetensors, tokenizer.model,
//                tokenizer_config.json (zephyr chat template)
//   train.jsonl  80 chat conversations (capitals, colours, sums)
//   valid.jsonl  16 more of the same kind
//   spec.json    a train spec over the above (3 epochs, batch 4, lr 2e-3,
//                LoRA r=8 on all seven projections), adapter written to
//                out_dir/adapter
// The same call always writes the same bytes. INTERNAL on I/O failure.
absl::Status MakeDemo(const std::string& out_dir);

// The shape of a demo model; the defaults are MakeDemo's.
struct DemoModelSize {
  int hidden_size = 64;
  int intermediate_size = 160;
  int num_hidden_layers = 2;
  int num_attention_heads = 4;  // head_dim = hidden_size / heads
  int num_key_value_heads = 2;
  int vocab_size = 0;  // 0: the tokenizer's (a larger one leaves ids unused)
};

// Replaces out_dir/model's config.json and model.safetensors by a random
// model of `size` (same tokenizer). REQUIRES: MakeDemo(out_dir) succeeded.
// INTERNAL on I/O failure.
absl::Status ResizeDemoModel(const std::string& out_dir,
                             const DemoModelSize& size);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_CLI_DEMO_H_
