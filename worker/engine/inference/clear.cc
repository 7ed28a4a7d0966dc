#include "worker/engine/inference/clear.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/data/clear.h"
#include "worker/engine/inference/generate.h"
#include "worker/engine/recipes/rft.h"

namespace lathe::engine {

absl::StatusOr<ClearPair> ClearPairOf(const Tokenizer& tokenizer,
                                      const ChatTemplate* chat_template,
                                      const DataRecord& record) {
  ClearPair pair;
  std::string prompt;
  if (record.format == DataFormat::kPromptCompletion) {
    prompt = record.prompt;
    pair.question = record.prompt;
    pair.response = record.completion;
  } else if (record.format == DataFormat::kChat) {
    if (record.messages.empty() || record.messages.back().role != "assistant") {
      return absl::InvalidArgumentError(
          "the last message must be the assistant's response to score");
    }
    if (chat_template == nullptr) {
      return absl::InvalidArgumentError(
          "chat lines need the model's chat template");
    }
    const std::vector<ChatMessage> before(record.messages.begin(),
                                          record.messages.end() - 1);
    prompt = chat_template->RenderPrompt(before);
    for (const ChatMessage& m : before) {
      absl::StrAppend(&pair.question, pair.question.empty() ? "" : "\n", m.role,
                      ": ", m.content);
    }
    pair.response = record.messages.back().content;
  } else {
    return absl::InvalidArgumentError(
        "a text line is no (prompt, response) pair; CLEAR scores chat or "
        "prompt/completion lines");
  }
  ASSIGN_OR_RETURN(Encoding encoding, tokenizer.Encode(prompt));
  if (encoding.ids.empty())
    return absl::InvalidArgumentError("the prompt has no tokens");
  pair.prompt_ids = std::move(encoding.ids);
  pair.stop_ids = ReplyStopIds(tokenizer, chat_template);
  return pair;
}

absl::StatusOr<double> Consistency(const LlamaModel& model,
                                   const Tokenizer& tokenizer,
                                   const ClearPair& pair, int64_t line,
                                   const ConsistencyOptions& options) {
  if (options.samples < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("samples: must be at least 1, got ", options.samples));
  }
  GenerateOptions generate{.max_new_tokens = options.max_new_tokens,
                           .temperature = options.temperature,
                           .stop_ids = pair.stop_ids};
  double total = 0;
  for (int s = 0; s < options.samples; ++s) {
    generate.seed = RftSampleSeed(options.seed, 0, line, s);
    ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                     Generate(model, pair.prompt_ids, generate));
    if (!ids.empty() && std::find(pair.stop_ids.begin(), pair.stop_ids.end(),
                                  ids.back()) != pair.stop_ids.end()) {
      ids.pop_back();
    }
    ASSIGN_OR_RETURN(const std::string text, tokenizer.Decode(ids));
    total += ResponseSimilarity(options.extractor, text, pair.response);
  }
  return total / options.samples;
}

std::string ReflectionPrompt(const ClearPair& pair) {
  return absl::StrCat(
      "Question: ", pair.question, "\nProposed answer: ", pair.response,
      "\nIs the proposed answer correct?\nA) Correct\nB) Incorrect\nAnswer:");
}

absl::StatusOr<double> Reflection(const LlamaModel& model,
                                  const Tokenizer& tokenizer,
                                  const ClearPair& pair) {
  const std::string prompt = ReflectionPrompt(pair);
  ASSIGN_OR_RETURN(const Encoding correct,
                   tokenizer.Encode(prompt + " Correct"));
  ASSIGN_OR_RETURN(const Encoding incorrect,
                   tokenizer.Encode(prompt + " Incorrect"));
  size_t common = 0;
  while (common < correct.ids.size() && common < incorrect.ids.size() &&
         correct.ids[common] == incorrect.ids[common]) {
    ++common;
  }
  if (common == 0 || common == correct.ids.size() ||
      common == incorrect.ids.size()) {
    return absl::InvalidArgumentError(
        "the tokenizer does not tell \" Correct\" from \" Incorrect\" after "
        "the reflection "
        "prompt");
  }
  const std::vector<int64_t> prefix(correct.ids.begin(),
                                    correct.ids.begin() + common);
  try {
    const torch::Tensor logits = NextLogits(model, prefix).to(torch::kFloat64);
    // P(c) / (P(c) + P(i)) = sigmoid(logit_c - logit_i): the softmax's
    // normaliser cancels.
    const double margin = logits[correct.ids[common]].item<double>() -
                          logits[incorrect.ids[common]].item<double>();
    return 1 / (1 + std::exp(-margin));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("reflection failed: ", e.what_without_backtrace()));
  }
}

}  // namespace lathe::engine
