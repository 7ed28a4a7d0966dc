// Reading a whole JSON document from a file, with errors naming the file.
// Torch-free.
#ifndef LATHE_WORKER_ENGINE_TEXT_JSON_FILE_H_
#define LATHE_WORKER_ENGINE_TEXT_JSON_FILE_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lathe::engine {

// Documents nested deeper are refused: code that reads a document (copies,
// dump(), Sequence steps) recurses once per level, so a deep one would
// overflow the stack. Real configs and tokenizer.json nest < 10 levels.
inline constexpr int kMaxJsonDepth = 64;

// The parsed contents of `path`. NOT_FOUND when it cannot be opened,
// INVALID_ARGUMENT when it is not JSON or nests deeper than kMaxJsonDepth.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// Writes `value` (pretty-printed) to `path` through a temp file and a rename.
// INTERNAL on I/O failure.
absl::Status WriteJsonFile(const std::string& path,
                           const nlohmann::json& value);

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_TEXT_JSON_FILE_H_
