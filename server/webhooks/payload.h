// The body of a webhook delivery, shaped as OpenAI's webhook events:
//
//   {"id": "msg_…", "object": "event", "created_at": 1733230000,
//    "type": "fine_tuning.job.succeeded",
//    "data": {"id": "ftjob-…", "object": "fine_tuning.job",
//             "status": "succeeded", "event_id": "ftevent-…-12",
//             "message": "The job has successfully completed: ft:…",
//             "fine_tuned_model": "ft:…", "trained_tokens": 6400}}
//
// data also holds "error" {code, message, param} for a failed job, and
// "metrics" (every field of the event's Metrics, numbers as numbers) for a
// metrics event, which has no "status". A delivery's body is the same on
// every attempt: it is built from the delivery's record, its (immutable)
// job event and, for a finished job, the job's final fields.
#ifndef LATHE_SERVER_WEBHOOKS_PAYLOAD_H_
#define LATHE_SERVER_WEBHOOKS_PAYLOAD_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "lathe/v1/fine_tuning.pb.h"

namespace lathe {

// The JSON body of delivery `delivery_id` of type `event_type` created at
// `created_at` (Unix seconds), telling of `event` of `job`.
std::string WebhookPayload(absl::string_view delivery_id, int64_t created_at,
                           absl::string_view event_type, const v1::Job& job,
                           const v1::JobEvent& event);

}  // namespace lathe

#endif  // LATHE_SERVER_WEBHOOKS_PAYLOAD_H_
