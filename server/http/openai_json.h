// The OpenAI fine-tuning API's JSON, to and from the API's messages: what
// the HTTP gateway (http_gateway.h) answers and reads. Objects are shaped
// as OpenAI's published ones (`object` fields, Unix-second timestamps, the
// status strings, nullable fields present as null); what only Lathe has
// rides along under the key "lathe", in proto3 JSON (field names as in
// proto/lathe/v1, 64-bit integers as strings, enums by name).
//
// Pure functions, no HTTP.
#ifndef LATHE_SERVER_HTTP_OPENAI_JSON_H_
#define LATHE_SERVER_HTTP_OPENAI_JSON_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lathe/v1/files.pb.h"
#include "lathe/v1/fine_tuning.pb.h"
#include "lathe/v1/models.pb.h"
#include "nlohmann/json.hpp"

namespace lathe::openai {

using Json = nlohmann::ordered_json;

// "validating_files", "queued", "running", "paused", "succeeded", "failed",
// "cancelled" (a job still cancelling shows "cancelled", as OpenAI answers
// a cancel).
std::string StatusString(v1::JobStatus status);
// The inverse, for the `status` filter of a listing; INVALID_ARGUMENT
// naming `field` for anything else.
absl::StatusOr<v1::JobStatus> ParseStatus(const std::string& status,
                                          const std::string& field);

Json FileObject(const v1::File& file);
Json JobObject(const v1::Job& job);
Json EventObject(const v1::JobEvent& event);
Json CheckpointObject(const v1::Checkpoint& checkpoint, const v1::Job& job);
Json ModelObject(const v1::Model& model);

// {"object": "list", "data": [...], "has_more": ...}; with first_id and
// last_id when `ids` (files, checkpoints).
Json ListObject(Json data, bool has_more, bool ids = false);

// The request of POST /v1/fine_tuning/jobs: OpenAI's keys (model,
// training_file, validation_file, hyperparameters, method with supervised
// and dpo, suffix, seed, metadata, integrations) and Lathe's extensions,
// each under its CreateJobRequest field name (lora, adapter, priority,
// training_mixture, stages, reports, s2ft, trainable, idempotency_key, and
// the further method types and hyperparameters). "auto" and null mean
// unset. Enum values may be written short and in lower case ("full" for
// ADAPTER_TYPE_FULL). INVALID_ARGUMENT naming the key at fault.
absl::StatusOr<v1::CreateJobRequest> CreateJobRequestFromJson(
    const std::string& body);

// The HTTP status of an operation's error, and OpenAI's error body:
// {"error": {"message", "type", "param", "code"}}, `param` the field the
// message names (common/status_subject.h), `code` its reason in lower case.
int HttpStatusOf(const absl::Status& status);
Json ErrorBody(const absl::Status& status);

}  // namespace lathe::openai

#endif  // LATHE_SERVER_HTTP_OPENAI_JSON_H_
