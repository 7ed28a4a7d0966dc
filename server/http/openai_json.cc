#include "server/http/openai_json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/job_method.h"
#include "common/status_macros.h"
#include "common/status_subject.h"

namespace lathe::openai {
namespace {

namespace pb = google::protobuf;

// proto3 JSON of `m`, field names as in the .proto files.
Json ProtoJson(const pb::Message& m) {
  std::string out;
  pb::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  if (!pb::util::MessageToJsonString(m, &out, o).ok()) return Json::object();
  return Json::parse(out);
}

Json NullIfEmpty(const std::string& s) { return s.empty() ? Json() : Json(s); }
Json NullIfZero(int64_t v) { return v == 0 ? Json() : Json(v); }

// The OpenAI method object of a job: {type, <type>: {hyperparameters}}
// for every type; supervised and dpo are OpenAI's, the others Lathe's.
Json MethodObject(const v1::Job& job) {
  const std::string type = MethodType(job.method());
  Json method = {{"type", type}};
  Json body = Json::object();
  const pb::Descriptor* d = job.method().GetDescriptor();
  if (const pb::FieldDescriptor* f = d->FindFieldByName(type)) {
    const pb::Message& sub =
        job.method().GetReflection()->GetMessage(job.method(), f);
    body = ProtoJson(sub);
  }
  body["hyperparameters"] = ProtoJson(MethodHyperparameters(job.method()));
  method[type] = std::move(body);
  return method;
}

// Enum names written short: "full" for ADAPTER_TYPE_FULL, found from the
// enum's UNSPECIFIED value's prefix.
const pb::EnumValueDescriptor* ShortEnumValue(const pb::EnumDescriptor* e,
                                              const std::string& s) {
  if (const auto* v = e->FindValueByName(s)) return v;
  std::string prefix;
  for (int i = 0; i < e->value_count(); ++i) {
    const std::string& name = e->value(i)->name();
    if (absl::EndsWith(name, "_UNSPECIFIED")) {
      prefix = name.substr(0, name.size() - std::string("UNSPECIFIED").size());
    }
  }
  return e->FindValueByName(prefix + absl::AsciiStrToUpper(s));
}

// Checks `j` against message type `d` before the proto parser sees it:
// unknown keys are named by their path, "auto" and null are dropped, short
// enum names are made whole.
absl::Status Normalize(Json& j, const pb::Descriptor* d,
                       const std::string& path);

absl::Status NormalizeValue(Json& v, const pb::FieldDescriptor* f,
                            const std::string& path) {
  if (f->message_type() != nullptr) {
    if (!v.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": must be an object"));
    }
    return Normalize(v, f->message_type(), path);
  }
  if (f->enum_type() != nullptr && v.is_string()) {
    const auto* e = ShortEnumValue(f->enum_type(), v.get<std::string>());
    if (e == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": \"", Echo(v.get<std::string>()), "\" is not one of ",
          f->enum_type()->name(), "'s values"));
    }
    v = e->name();
  }
  return absl::OkStatus();
}

absl::Status Normalize(Json& j, const pb::Descriptor* d,
                       const std::string& path) {
  auto name = [&](const std::string& key) {
    return path.empty() ? key : absl::StrCat(path, ".", key);
  };
  for (auto it = j.begin(); it != j.end();) {
    const std::string key = it.key();
    Json& v = it.value();
    if (v.is_null() || (v.is_string() && v.get<std::string>() == "auto")) {
      it = j.erase(it);
      continue;
    }
    const pb::FieldDescriptor* f = d->FindFieldByName(key);
    if (f == nullptr) f = d->FindFieldByCamelcaseName(key);
    if (f == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(name(key), ": unknown field"));
    }
    if (f->is_map()) {
      if (!v.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name(key), ": must be an object"));
      }
      const pb::FieldDescriptor* value = f->message_type()->map_value();
      for (auto& [k, mv] : v.items()) {
        RETURN_IF_ERROR(
            NormalizeValue(mv, value, absl::StrCat(name(key), "[", k, "]")));
      }
    } else if (f->is_repeated()) {
      if (!v.is_array()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name(key), ": must be an array"));
      }
      for (size_t i = 0; i < v.size(); ++i) {
        RETURN_IF_ERROR(
            NormalizeValue(v[i], f, absl::StrCat(name(key), "[", i, "]")));
      }
    } else {
      RETURN_IF_ERROR(NormalizeValue(v, f, name(key)));
    }
    ++it;
  }
  return absl::OkStatus();
}

}  // namespace

std::string StatusString(v1::JobStatus status) {
  switch (status) {
    case v1::JOB_STATUS_VALIDATING_FILES:
      return "validating_files";
    case v1::JOB_STATUS_QUEUED:
      return "queued";
    case v1::JOB_STATUS_RUNNING:
      return "running";
    case v1::JOB_STATUS_PAUSED:
      return "paused";
    case v1::JOB_STATUS_CANCELLING:
    case v1::JOB_STATUS_CANCELLED:
      return "cancelled";
    case v1::JOB_STATUS_SUCCEEDED:
      return "succeeded";
    case v1::JOB_STATUS_FAILED:
      return "failed";
    default:
      return "validating_files";
  }
}

absl::StatusOr<v1::JobStatus> ParseStatus(const std::string& s,
                                          const std::string& field) {
  for (v1::JobStatus st :
       {v1::JOB_STATUS_VALIDATING_FILES, v1::JOB_STATUS_QUEUED,
        v1::JOB_STATUS_RUNNING, v1::JOB_STATUS_PAUSED,
        v1::JOB_STATUS_CANCELLING, v1::JOB_STATUS_SUCCEEDED,
        v1::JOB_STATUS_FAILED, v1::JOB_STATUS_CANCELLED}) {
    std::string name = absl::AsciiStrToLower(v1::JobStatus_Name(st));
    if (s == name.substr(std::string("job_status_").size()) ||
        s == v1::JobStatus_Name(st)) {
      return st;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": \"", Echo(s),
      "\" is not a status (validating_files, queued, running, paused, "
      "cancelling, succeeded, failed, cancelled)"));
}

Json FileObject(const v1::File& f) {
  return {{"object", "file"},
          {"id", f.id()},
          {"bytes", f.bytes()},
          {"created_at", f.created_at()},
          {"filename", f.filename()},
          {"purpose", f.purpose()},
          // Stored only once every line validated.
          {"status", "processed"},
          {"status_details", nullptr},
          {"expires_at", nullptr},
          {"lathe", ProtoJson(f)}};
}

Json JobObject(const v1::Job& job) {
  const v1::Hyperparameters& h = MethodHyperparameters(job.method());
  Json hyper = Json::object();
  hyper["n_epochs"] = h.has_n_epochs() ? Json(h.n_epochs()) : Json("auto");
  hyper["batch_size"] =
      h.has_batch_size() ? Json(h.batch_size()) : Json("auto");
  hyper["learning_rate_multiplier"] = h.has_learning_rate_multiplier()
                                          ? Json(h.learning_rate_multiplier())
                                          : Json("auto");
  Json error;
  if (job.has_error() && !job.error().code().empty()) {
    error = {{"code", job.error().code()},
             {"message", job.error().message()},
             {"param", NullIfEmpty(job.error().param())}};
  }
  Json metadata;
  if (!job.metadata().empty()) {
    metadata = Json::object();
    // Sorted, so an answer reads the same every time.
    std::map<std::string, std::string> sorted(job.metadata().begin(),
                                              job.metadata().end());
    for (const auto& [k, v] : sorted) metadata[k] = v;
  }
  return {{"object", "fine_tuning.job"},
          {"id", job.id()},
          {"created_at", job.created_at()},
          {"finished_at", NullIfZero(job.finished_at())},
          {"model", job.model()},
          {"fine_tuned_model", NullIfEmpty(job.fine_tuned_model())},
          {"organization_id", job.project()},
          {"result_files", Json::array()},
          {"status", StatusString(job.status())},
          {"training_file", job.training_file()},
          {"validation_file", NullIfEmpty(job.validation_file())},
          {"hyperparameters", hyper},
          {"trained_tokens", job.status() == v1::JOB_STATUS_SUCCEEDED
                                 ? Json(job.trained_tokens())
                                 : Json()},
          {"error", error},
          {"estimated_finish", NullIfZero(job.estimated_finish())},
          {"integrations", nullptr},
          {"seed", job.seed()},
          {"user_provided_suffix", NullIfEmpty(job.suffix())},
          {"metadata", metadata},
          {"method", MethodObject(job)},
          {"lathe", ProtoJson(job)}};
}

Json EventObject(const v1::JobEvent& e) {
  Json data;
  if (e.type() == "metrics") {
    const v1::Metrics& m = e.metrics();
    data = {{"step", m.step()},
            {"total_steps", m.total_steps()},
            {"train_loss", m.train_loss()},
            {"train_mean_token_accuracy", m.train_mean_token_accuracy()},
            {"learning_rate", m.learning_rate()},
            {"tokens_per_second", m.tokens_per_second()},
            {"trained_tokens", m.trained_tokens()}};
    std::map<std::string, double> values(m.values().begin(), m.values().end());
    for (const auto& [k, v] : values) data[k] = v;
    if (m.stage() != 0) data["stage"] = m.stage();
  } else if (e.status() != v1::JOB_STATUS_UNSPECIFIED) {
    data = {{"status", StatusString(e.status())}};
  }
  return {{"object", "fine_tuning.job.event"},
          {"id", e.id()},
          {"created_at", e.created_at()},
          {"level", e.level().empty() ? "info" : e.level()},
          {"message", e.message()},
          {"type", e.type().empty() ? "message" : e.type()},
          {"data", data}};
}

Json CheckpointObject(const v1::Checkpoint& c, const v1::Job& job) {
  const v1::CheckpointMetrics& m = c.metrics();
  Json metrics = {{"step", c.step_number()},
                  {"train_loss", m.train_loss()},
                  {"train_mean_token_accuracy", m.train_mean_token_accuracy()}};
  if (m.has_valid_loss()) {
    // Lathe validates on the whole validation file: the "full" figures.
    metrics["valid_loss"] = m.valid_loss();
    metrics["full_valid_loss"] = m.valid_loss();
  }
  if (m.has_valid_mean_token_accuracy()) {
    metrics["valid_mean_token_accuracy"] = m.valid_mean_token_accuracy();
    metrics["full_valid_mean_token_accuracy"] = m.valid_mean_token_accuracy();
  }
  std::string model = job.fine_tuned_model().empty()
                          ? absl::StrCat("ft:", job.model(), ":", job.id())
                          : job.fine_tuned_model();
  return {{"object", "fine_tuning.job.checkpoint"},
          {"id", c.id()},
          {"created_at", c.created_at()},
          {"fine_tuned_model_checkpoint",
           absl::StrCat(model, ":ckpt-step-", c.step_number())},
          {"fine_tuning_job_id", c.job_id()},
          {"step_number", c.step_number()},
          {"metrics", metrics},
          {"lathe", ProtoJson(c)}};
}

Json ModelObject(const v1::Model& m) {
  return {{"object", "model"},
          {"id", m.id()},
          {"created", m.created_at()},
          {"owned_by", m.kind() == "base" ? "system" : "user"},
          {"lathe", ProtoJson(m)}};
}

Json ListObject(Json data, bool has_more, bool ids) {
  Json out = {{"object", "list"}};
  if (ids) {
    out["first_id"] = data.empty() ? Json() : data.front()["id"];
    out["last_id"] = data.empty() ? Json() : data.back()["id"];
  }
  out["data"] = std::move(data);
  out["has_more"] = has_more;
  return out;
}

absl::StatusOr<v1::CreateJobRequest> CreateJobRequestFromJson(
    const std::string& body) {
  Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError("body: not valid JSON");
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError("body: must be a JSON object");
  }
  // OpenAI's legacy top-level hyperparameters are the method's.
  if (j.contains("hyperparameters") && !j["hyperparameters"].is_null()) {
    if (j.contains("method") && !j["method"].is_null()) {
      return absl::InvalidArgumentError(
          "hyperparameters: send them in method.<type>.hyperparameters when "
          "method is given, not both");
    }
    j["method"] = {{"type", "supervised"},
                   {"supervised", {{"hyperparameters", j["hyperparameters"]}}}};
  }
  j.erase("hyperparameters");
  if (j.contains("integrations")) {
    const Json& in = j["integrations"];
    if (!in.is_null() && !(in.is_array() && in.empty())) {
      return absl::InvalidArgumentError(
          "integrations: not supported by Lathe (follow a job with its "
          "events, the dashboard or webhooks)");
    }
    j.erase("integrations");
  }
  RETURN_IF_ERROR(Normalize(j, v1::CreateJobRequest::descriptor(), ""));
  v1::CreateJobRequest request;
  pb::util::JsonParseOptions o;
  o.ignore_unknown_fields = false;
  auto parsed = pb::util::JsonStringToMessage(j.dump(), &request, o);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("body: ", std::string(parsed.message())));
  }
  return request;
}

int HttpStatusOf(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kCancelled:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted: {
      // A size limit is the request's fault; a count in flight clears.
      StatusSubject s = SubjectOf(std::string(status.message()));
      bool size = s.limit == "max_upload_bytes" ||
                  s.limit == "max_line_bytes" ||
                  s.limit == "max_examples_per_file";
      return size ? 413 : 429;
    }
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

Json ErrorBody(const absl::Status& status) {
  const std::string message(status.message());
  StatusSubject s = SubjectOf(message);
  std::string type;
  switch (HttpStatusOf(status)) {
    case 401:
      type = "authentication_error";
      break;
    case 403:
      type = "permission_error";
      break;
    case 429:
      type = "rate_limit_error";
      break;
    case 500:
    case 501:
    case 503:
    case 504:
      type = "server_error";
      break;
    default:
      type = "invalid_request_error";
  }
  Json param;
  if (!s.field.empty()) {
    param = s.field;
  } else if (!s.line.empty()) {
    param = absl::StrCat("line ", s.line);
  }
  std::string code = absl::AsciiStrToLower(ErrorReason(status.code(), s));
  if (status.code() == absl::StatusCode::kUnauthenticated) {
    code = "invalid_api_key";
  }
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param},
            {"code", code}}}};
}

}  // namespace lathe::openai
