// Reads a Hugging Face model folder on the server without LibTorch: checks
// config.json and the safetensors weights (single file or shards through
// model.safetensors.index.json), counts parameters and hashes every file.
#ifndef LATHE_SERVER_MODEL_INSPECT_H_
#define LATHE_SERVER_MODEL_INSPECT_H_

#include <string>

#include "absl/status/statusor.h"
#include "lathe/v1/models.pb.h"

namespace lathe {

// Fills a base Model (everything but id and created_at) from `folder`.
// INVALID_ARGUMENT naming the file and field when the folder is not a
// supported model: missing config.json, unknown architecture, missing or
// malformed weights, a shard the index names that is absent.
absl::StatusOr<v1::Model> InspectModelFolder(const std::string& folder);

// The cache key of a model's files: SHA-256 over "name\tbytes\tsha256\n"
// lines in name order.
std::string ContentSha256(const v1::Model& model);

}  // namespace lathe

#endif  // LATHE_SERVER_MODEL_INSPECT_H_
