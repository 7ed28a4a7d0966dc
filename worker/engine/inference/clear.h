// The model's side of CLEAR-style confidence (METHODS.md §8.2,
// data/clear.h): a line as a (prompt, response) pair, the observed
// consistency O of sampled responses with it, and the self-reflection
// certainty S.
#ifndef LATHE_WORKER_ENGINE_INFERENCE_CLEAR_H_
#define LATHE_WORKER_ENGINE_INFERENCE_CLEAR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/data/rft.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {

// A data line as CLEAR scores it.
struct ClearPair {
  std::vector<int32_t> prompt_ids;  // what the model continues to answer
  std::string question;  // x as text: the prompt, or "role: content" lines
  std::string response;  // y: the completion or the last assistant message
  std::vector<int32_t> stop_ids;  // the end of a generated response
};

// The pair of `record`: prompt/completion lines as they are; chat lines
// the messages before the last (which must be the assistant's), rendered
// with the generation prompt of `chat_template`. INVALID_ARGUMENT for a
// text line (no prompt), a chat line not ending with an assistant
// message, a chat line without `chat_template`, or a prompt without
// tokens.
absl::StatusOr<ClearPair> ClearPairOf(const Tokenizer& tokenizer,
                                      const ChatTemplate* chat_template,
                                      const DataRecord& record);

struct ConsistencyOptions {
  int samples = 5;         // k (METHODS.md: k = 5)
  double temperature = 1;  // BSDetector samples at T = 1
  int max_new_tokens = 256;
  uint64_t seed = 0;  // sample s of line i: RftSampleSeed(seed, 0, i, s)
  // Exact match of extracted answers where the response has one; null:
  // token F1 (data/clear.h ResponseSimilarity).
  const AnswerExtractor* extractor = nullptr;
};

// O: the mean ResponseSimilarity to pair.response of `samples` responses
// generated after pair.prompt_ids (each decoded without its stop token).
// `line` (0-based) seeds the samples. Errors as Generate / Decode.
absl::StatusOr<double> Consistency(const LlamaModel& model,
                                   const Tokenizer& tokenizer,
                                   const ClearPair& pair, int64_t line,
                                   const ConsistencyOptions& options);

// The fixed self-reflection prompt (plain text, whatever the line's
// format), ending "Answer:".
std::string ReflectionPrompt(const ClearPair& pair);

// S = P(Correct) / (P(Correct) + P(Incorrect)) from the next-token
// distribution after the reflection prompt: the tokens compared are the
// first ones where the encodings of prompt + " Correct" and
// prompt + " Incorrect" differ, read after their common prefix.
// INVALID_ARGUMENT when the two encodings do not differ (a tokenizer that
// cannot tell them apart); errors as Encode.
absl::StatusOr<double> Reflection(const LlamaModel& model,
                                  const Tokenizer& tokenizer,
                                  const ClearPair& pair);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_INFERENCE_CLEAR_H_
