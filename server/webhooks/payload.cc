#include "server/webhooks/payload.h"

#include <nlohmann/json.hpp>

#include "common/job_state.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"

namespace lathe {
namespace {

using Json = nlohmann::ordered_json;

// Every field of `m` by its proto name, read through reflection so that a
// field added to the message reaches the payload without a second list:
// integers and doubles as JSON numbers, a map<string, double> as an object.
Json NumbersOf(const google::protobuf::Message& m) {
  namespace pb = google::protobuf;
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  Json out = Json::object();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->is_map()) {
      Json map = Json::object();
      for (const pb::Message& entry :
           r->GetRepeatedFieldRef<pb::Message>(m, f)) {
        const pb::Descriptor* ed = entry.GetDescriptor();
        const pb::Reflection* er = entry.GetReflection();
        map[er->GetString(entry, ed->map_key())] =
            er->GetDouble(entry, ed->map_value());
      }
      out[f->name()] = std::move(map);
      continue;
    }
    if (f->is_repeated()) continue;
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32:
        out[f->name()] = r->GetInt32(m, f);
        break;
      case pb::FieldDescriptor::CPPTYPE_INT64:
        out[f->name()] = r->GetInt64(m, f);
        break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        out[f->name()] = r->GetDouble(m, f);
        break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        out[f->name()] = r->GetFloat(m, f);
        break;
      default:
        break;
    }
  }
  return out;
}

}  // namespace

std::string WebhookPayload(absl::string_view delivery_id, int64_t created_at,
                           absl::string_view event_type, const v1::Job& job,
                           const v1::JobEvent& event) {
  Json data = Json::object();
  data["id"] = job.id();
  data["object"] = "fine_tuning.job";
  if (event.status() != v1::JOB_STATUS_UNSPECIFIED) {
    data["status"] = std::string(StatusName(event.status()));
  }
  data["event_id"] = event.id();
  data["message"] = event.message();
  if (event.status() == v1::JOB_STATUS_SUCCEEDED) {
    data["fine_tuned_model"] = job.fine_tuned_model();
    data["trained_tokens"] = job.trained_tokens();
  }
  if (event.status() == v1::JOB_STATUS_FAILED) {
    data["error"] = {
        {"code", job.error().code()},
        {"message", job.error().message()},
        {"param", job.error().param().empty() ? Json(nullptr)
                                              : Json(job.error().param())}};
  }
  if (event.type() == "metrics") data["metrics"] = NumbersOf(event.metrics());
  Json body = {{"id", std::string(delivery_id)},
               {"object", "event"},
               {"created_at", created_at},
               {"type", std::string(event_type)},
               {"data", std::move(data)}};
  // Invalid UTF-8 in a message is replaced, not thrown on.
  return body.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace lathe
