// Preference pairs for DPO and ORPO: OpenAI's preference JSONL (see
// common/data_format.h) as two training rows per pair, prompt + preferred
// reply and prompt + non-preferred reply.
//
// A row is the conversation input.messages + [reply] rendered by the
// model's chat template, exactly as a chat example with only that last
// assistant message trained (data/chat_data.h): the prompt is everything up
// to the reply, rendered once with the assistant header the template puts
// before a reply; the completion is the reply's content and the template's
// end-of-turn token, once. This is the decision METHODS.md §1.2 asks for:
// TRL appends eos_token_id after a completion even where the template
// already closed the turn with it (Llama 3's <|eot_id|>, ChatML's
// <|im_end|>, Zephyr's </s>), giving the token twice; Lathe renders the
// turn once and appends nothing, so the completion ends with the
// end-of-turn token the model generates at inference, and what the template
// puts after it (ChatML's "\n") is neither completion nor trained. Earlier
// assistant turns of the prompt are prompt, never trained.
//
// Truncation: the prompt keeps its last max_prompt_len tokens (TRL's
// max_prompt_length, keep_end), then the row keeps its first max_seq_len
// tokens (TRL's max_length; the completion's end is cut). Torch-free.
#ifndef LATHE_WORKER_ENGINE_DATA_PREFERENCE_DATA_H_
#define LATHE_WORKER_ENGINE_DATA_PREFERENCE_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/chat_data.h"
#include "worker/engine/text/chat_template.h"
#include "worker/engine/text/tokenizer.h"

namespace lathe::engine {

// One pair's rows; loss_mask marks the completion (reply) tokens.
struct PreferencePair {
  Example chosen;
  Example rejected;
  int line = 0;  // 1-based line in the file
};

struct PreferenceDataset {
  std::vector<PreferencePair> pairs;
  int64_t truncated = 0;  // pairs with a row cut (prompt or length)
};

// The pair of one preference record. INVALID_ARGUMENT for another format.
absl::StatusOr<PreferencePair> TokenizePreference(
    const Tokenizer& tokenizer, const ChatTemplate& chat_template,
    const DataRecord& record);

// Cuts `pair` as described above. Returns whether anything was cut.
// REQUIRES: 0 < max_prompt_len < max_seq_len.
bool TruncatePair(PreferencePair& pair, int max_prompt_len, int max_seq_len);

// Reads and tokenizes a file of preference lines. INVALID_ARGUMENT as
// ReadDataJsonl, naming the line of a line of another format (a chat file
// given to DPO) or the template error when the model has none; `name` as
// for ReadDataJsonl.
absl::StatusOr<PreferenceDataset> LoadPreferenceDataset(
    const std::string& path, const Tokenizer& tokenizer,
    const absl::StatusOr<ChatTemplate>& chat_template, int max_prompt_len,
    int max_seq_len, const std::string& name = "");

// The rows of pairs[indices], chosen rows first then rejected rows in the
// same order: one forward pass computes both (METHODS.md §1.2).
std::vector<Example> PairRows(const std::vector<PreferencePair>& pairs,
                              const std::vector<size_t>& indices);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DATA_PREFERENCE_DATA_H_
