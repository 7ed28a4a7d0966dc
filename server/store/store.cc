#include "server/store/store.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/job_method.h"
#include "absl/strings/strip.h"
#include "common/echo.h"
#include "common/ids.h"
#include "common/job_state.h"
#include "common/status_macros.h"

namespace lathe::store {
namespace {

// Numbered migrations; migration i moves user_version from i to i + 1.
constexpr const char* kMigrations[] = {
    R"sql(
CREATE TABLE files (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL,
  filename TEXT NOT NULL,
  purpose TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  line_count INTEGER NOT NULL,
  format TEXT NOT NULL
);
CREATE TABLE models (
  name TEXT PRIMARY KEY,
  path TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  info BLOB NOT NULL
);
CREATE TABLE jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  status INTEGER NOT NULL,
  spec BLOB NOT NULL,
  idempotency_key TEXT UNIQUE,
  fingerprint TEXT,
  attempt INTEGER NOT NULL DEFAULT 0,
  worker_id TEXT,
  error BLOB,
  fine_tuned_model TEXT,
  trained_tokens INTEGER NOT NULL DEFAULT 0,
  steps_done INTEGER NOT NULL DEFAULT 0,
  steps_total INTEGER NOT NULL DEFAULT 0,
  started_at INTEGER NOT NULL DEFAULT 0,
  attempt_started_ms INTEGER NOT NULL DEFAULT 0,
  finished_at INTEGER NOT NULL DEFAULT 0,
  not_before_ms INTEGER NOT NULL DEFAULT 0,
  project TEXT NOT NULL DEFAULT 'default',
  priority INTEGER NOT NULL DEFAULT 2,
  memory_bytes INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL DEFAULT 0,
  training_file TEXT NOT NULL DEFAULT '',
  validation_file TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_project ON jobs(project, status);
CREATE INDEX jobs_by_training_file ON jobs(training_file);
CREATE INDEX jobs_by_validation_file ON jobs(validation_file);
CREATE TABLE job_metadata (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (job_id, key)
);
CREATE INDEX job_metadata_by_pair ON job_metadata(key, value);
CREATE TABLE checkpoint_files (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  step INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  name TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  PRIMARY KEY (job_id, step, name)
);
CREATE TABLE checkpoints (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  step INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  metrics BLOB NOT NULL,
  PRIMARY KEY (job_id, step)
);
CREATE INDEX jobs_by_status ON jobs(status, seq);
CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL REFERENCES jobs(id),
  attempt INTEGER NOT NULL,
  attempt_seq INTEGER NOT NULL,
  data BLOB NOT NULL
);
CREATE INDEX events_by_job ON events(job_id, seq);
CREATE UNIQUE INDEX events_by_attempt ON events(job_id, attempt, attempt_seq)
  WHERE attempt > 0;
CREATE TABLE result_files (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  name TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  PRIMARY KEY (job_id, name)
);
)sql",
    // 2: API keys; files belong to a project.
    R"sql(
CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,
  project TEXT NOT NULL,
  role TEXT NOT NULL,
  secret_sha256 TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL,
  revoked_at INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE files ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
CREATE INDEX files_by_project ON files(project, seq);
)sql",
    // 3: max_attempts counts failed attempts, not assignments (a pause or
    // a hand-back is not a failure); a resume asked for while the pause
    // checkpoint is still being written.
    R"sql(
ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN resume_requested INTEGER NOT NULL DEFAULT 0;
)sql",
    // 4: events are numbered per job (job_seq, the event id's number), so an
    // id tells a project nothing of other jobs; existing events are numbered
    // in the order they were written.
    R"sql(
ALTER TABLE events ADD COLUMN job_seq INTEGER NOT NULL DEFAULT 0;
UPDATE events SET job_seq = numbered.n
  FROM (SELECT seq, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY seq) AS n
        FROM events) AS numbered
  WHERE events.seq = numbered.seq;
DROP INDEX events_by_job;
CREATE UNIQUE INDEX events_by_job_seq ON events(job_id, job_seq);
)sql",
    // 5: every file a job reads (a mixture has several), by the job's field
    // naming it, so that no file an unfinished job needs can be deleted.
    R"sql(
CREATE TABLE job_files (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  field TEXT NOT NULL,
  file_id TEXT NOT NULL,
  PRIMARY KEY (job_id, field)
);
CREATE INDEX job_files_by_file ON job_files(file_id);
INSERT INTO job_files SELECT id, 'training_file', training_file FROM jobs
  WHERE training_file != '';
INSERT INTO job_files SELECT id, 'validation_file', validation_file FROM jobs
  WHERE validation_file != '';
)sql",
    // 6: a succeeded job's after-job reports (v1::JobReport).
    R"sql(
ALTER TABLE jobs ADD COLUMN report BLOB;
)sql",
    // 7: webhooks, their event types, and the deliveries queued with the
    // events they tell of (the outbox the dispatcher sends from).
    R"sql(
CREATE TABLE webhooks (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  project TEXT NOT NULL,
  url TEXT NOT NULL,
  secret TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL
);
CREATE INDEX webhooks_by_project ON webhooks(project, seq);
CREATE TABLE webhook_event_types (
  webhook_id TEXT NOT NULL REFERENCES webhooks(id),
  event_type TEXT NOT NULL,
  PRIMARY KEY (webhook_id, event_type)
);
CREATE TABLE webhook_deliveries (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  webhook_id TEXT NOT NULL REFERENCES webhooks(id),
  job_id TEXT NOT NULL REFERENCES jobs(id),
  event_job_seq INTEGER NOT NULL,
  event_type TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  status INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_response_code INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  next_attempt_ms INTEGER NOT NULL DEFAULT 0,
  delivered_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries(webhook_id, seq);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_ms);
)sql",
    // 8: the workers a job runs on at once (a gang's ranks), for the
    // scheduler's queue and fair share; every older job ran on one.
    R"sql(
ALTER TABLE jobs ADD COLUMN devices INTEGER NOT NULL DEFAULT 1;
)sql",
    // 9: what of a job's memory another LoRA job of its base on the same
    // worker already holds, and that base's content hash, for packing
    // several LoRA jobs on one worker; older jobs share nothing.
    R"sql(
ALTER TABLE jobs ADD COLUMN shared_memory_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN base_sha256 TEXT NOT NULL DEFAULT '';
)sql",
};

// Every file `job` reads, by the field that names it: its training and
// validation files, each mixture source's (of every stage), the forgetting
// report's and a GOT-D analysis's target.
std::vector<std::pair<std::string, std::string>> JobFiles(const v1::Job& job) {
  std::vector<std::pair<std::string, std::string>> files;
  if (!job.training_file().empty()) {
    files.push_back({"training_file", job.training_file()});
  }
  if (!job.validation_file().empty()) {
    files.push_back({"validation_file", job.validation_file()});
  }
  if (!job.reports().general_file().empty()) {
    files.push_back({"reports.general_file", job.reports().general_file()});
  }
  if (!job.method().analyze().got_d().target_file().empty()) {
    files.push_back({"method.analyze.got_d.target_file",
                     job.method().analyze().got_d().target_file()});
  }
  for (const auto& [mixture_field, mixture] : TrainingMixtures(job)) {
    const auto& sources = mixture->sources();
    for (int i = 0; i < sources.size(); ++i) {
      const std::string at = absl::StrCat(mixture_field, ".sources[", i, "].");
      if (!sources[i].file_id().empty()) {
        files.push_back({at + "file_id", sources[i].file_id()});
      }
      if (!sources[i].validation_file_id().empty()) {
        files.push_back({at + "validation_file_id", sources[i].validation_file_id()});
      }
    }
  }
  return files;
}

constexpr char kFileColumns[] =
    "id, created_at, filename, purpose, bytes, sha256, line_count, format, "
    "project";

v1::File ReadFile(const Statement& s) {
  v1::File f;
  f.set_id(s.ColumnText(0));
  f.set_created_at(s.ColumnInt(1));
  f.set_filename(s.ColumnText(2));
  f.set_purpose(s.ColumnText(3));
  f.set_bytes(s.ColumnInt(4));
  f.set_sha256(s.ColumnText(5));
  f.set_line_count(s.ColumnInt(6));
  f.set_format(s.ColumnText(7));
  f.set_project(s.ColumnText(8));
  return f;
}

}  // namespace

int Store::ClampLimit(int limit, int def, int max) {
  if (limit <= 0) return def;
  return std::min(limit, max);
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  ASSIGN_OR_RETURN(auto db, Database::Open(path));
  std::unique_ptr<Store> store(new Store(std::move(db)));
  absl::MutexLock lock(&store->mu_);
  RETURN_IF_ERROR(store->Migrate());
  return store;
}

absl::Status Store::Migrate() {
  ASSIGN_OR_RETURN(int version, db_->UserVersion());
  constexpr int kLatest = sizeof(kMigrations) / sizeof(kMigrations[0]);
  if (version > kLatest) {
    return absl::FailedPreconditionError(absl::StrCat(
        "database schema version ", version, " is newer than this lathed (",
        kLatest, "); upgrade lathed"));
  }
  for (int v = version; v < kLatest; ++v) {
    ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
    RETURN_IF_ERROR(db_->Execute(kMigrations[v]));
    RETURN_IF_ERROR(db_->Execute(absl::StrCat("PRAGMA user_version = ", v + 1)));
    RETURN_IF_ERROR(tx->Commit());
  }
  return absl::OkStatus();
}

absl::Status Store::InsertFile(const v1::File& f) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare(absl::StrCat("INSERT INTO files (", kFileColumns,
                                             ") VALUES (?,?,?,?,?,?,?,?,?)")));
  stmt.Bind(1, f.id()).Bind(2, f.created_at()).Bind(3, f.filename());
  stmt.Bind(4, f.purpose()).Bind(5, f.bytes()).Bind(6, f.sha256());
  stmt.Bind(7, f.line_count()).Bind(8, f.format());
  stmt.Bind(9, f.project().empty() ? std::string("default") : f.project());
  return stmt.Run();
}

absl::StatusOr<v1::File> Store::GetFile(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(absl::StrCat(
                                  "SELECT ", kFileColumns,
                                  " FROM files WHERE id = ?")));
  stmt.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no such file: ", id));
  return ReadFile(stmt);
}

absl::StatusOr<int64_t> Store::CursorSeq(absl::string_view table,
                                         const std::string& project,
                                         const std::string& after) {
  if (after.empty()) return INT64_MAX;
  // Another project's id is as unknown as a missing one.
  ASSIGN_OR_RETURN(auto c,
                   db_->Prepare(absl::StrCat("SELECT seq FROM ", table,
                                             " WHERE id = ? AND project = ?")));
  c.Bind(1, after).Bind(2, project);
  ASSIGN_OR_RETURN(bool row, c.Step());
  if (!row) {
    return absl::InvalidArgumentError(
        absl::StrCat("after: unknown cursor ", Echo(after)));
  }
  return c.ColumnInt(0);
}

absl::StatusOr<Page<v1::File>> Store::ListFiles(const std::string& project,
                                                int limit,
                                                const std::string& after,
                                                const std::string& purpose) {
  absl::MutexLock lock(&mu_);
  limit = ClampLimit(limit, 20, 100);
  ASSIGN_OR_RETURN(int64_t before_seq, CursorSeq("files", project, after));
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare(absl::StrCat(
                       "SELECT ", kFileColumns,
                       " FROM files WHERE seq < ? AND (? = '' OR purpose = ?)"
                       " AND project = ? ORDER BY seq DESC LIMIT ?")));
  stmt.Bind(1, before_seq).Bind(2, purpose).Bind(3, purpose).Bind(4, project);
  stmt.Bind(5, static_cast<int64_t>(limit + 1));
  Page<v1::File> page;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    if (static_cast<int>(page.data.size()) == limit) {
      page.has_more = true;
      break;
    }
    page.data.push_back(ReadFile(stmt));
  }
  return page;
}

absl::StatusOr<bool> Store::DeleteFile(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(auto f, db_->Prepare("SELECT sha256 FROM files WHERE id = ?"));
  f.Bind(1, id);
  ASSIGN_OR_RETURN(bool found, f.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("no such file: ", id));
  std::string sha = f.ColumnText(0);
  ASSIGN_OR_RETURN(auto live, db_->Prepare(
                                  "SELECT jobs.id FROM job_files JOIN jobs ON "
                                  "jobs.id = job_files.job_id WHERE "
                                  "job_files.file_id = ?1 AND jobs.status NOT IN "
                                  "(?2, ?3, ?4) LIMIT 1"));
  live.Bind(1, id).Bind(2, static_cast<int64_t>(v1::JOB_STATUS_SUCCEEDED));
  live.Bind(3, static_cast<int64_t>(v1::JOB_STATUS_FAILED));
  live.Bind(4, static_cast<int64_t>(v1::JOB_STATUS_CANCELLED));
  ASSIGN_OR_RETURN(bool used, live.Step());
  if (used) {
    return absl::FailedPreconditionError(absl::StrCat(
        "file ", id, " is used by job ", live.ColumnText(0),
        ", which has not finished; cancel it or wait"));
  }
  ASSIGN_OR_RETURN(auto del, db_->Prepare("DELETE FROM files WHERE id = ?"));
  del.Bind(1, id);
  RETURN_IF_ERROR(del.Run());
  ASSIGN_OR_RETURN(bool referenced, BlobReferencedLocked(sha));
  RETURN_IF_ERROR(tx->Commit());
  return !referenced;
}

absl::Status Store::InsertApiKey(const v1::ApiKey& key,
                                 const std::string& secret_sha256) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "INSERT INTO api_keys (id, project, role, "
                                  "secret_sha256, name, created_at) VALUES "
                                  "(?,?,?,?,?,?)"));
  stmt.Bind(1, key.id()).Bind(2, key.project()).Bind(3, key.role());
  stmt.Bind(4, secret_sha256).Bind(5, key.name()).Bind(6, key.created_at());
  return stmt.Run();
}

namespace {
constexpr char kKeyColumns[] = "id, project, role, name, created_at, revoked_at";
v1::ApiKey ReadKey(const Statement& s) {
  v1::ApiKey k;
  k.set_id(s.ColumnText(0));
  k.set_project(s.ColumnText(1));
  k.set_role(s.ColumnText(2));
  k.set_name(s.ColumnText(3));
  k.set_created_at(s.ColumnInt(4));
  k.set_revoked_at(s.ColumnInt(5));
  return k;
}
}  // namespace

absl::StatusOr<v1::ApiKey> Store::FindApiKey(const std::string& secret_sha256) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(absl::StrCat(
                                  "SELECT ", kKeyColumns,
                                  " FROM api_keys WHERE secret_sha256 = ?")));
  stmt.Bind(1, secret_sha256);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError("no such key");
  return ReadKey(stmt);
}

absl::StatusOr<v1::ApiKey> Store::GetApiKey(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare(absl::StrCat("SELECT ", kKeyColumns,
                                             " FROM api_keys WHERE id = ?")));
  stmt.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError("no such key");
  return ReadKey(stmt);
}

absl::StatusOr<std::vector<v1::ApiKey>> Store::ListApiKeys(
    const std::string& project) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(absl::StrCat(
                                  "SELECT ", kKeyColumns,
                                  " FROM api_keys WHERE ? = '' OR project = ? "
                                  "ORDER BY created_at, id")));
  stmt.Bind(1, project).Bind(2, project);
  std::vector<v1::ApiKey> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(ReadKey(stmt));
  }
  return out;
}

absl::StatusOr<v1::ApiKey> Store::RevokeApiKey(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "UPDATE api_keys SET revoked_at = ? WHERE "
                                  "id = ? AND revoked_at = 0"));
  stmt.Bind(1, NowUnixSeconds()).Bind(2, id);
  RETURN_IF_ERROR(stmt.Run());
  ASSIGN_OR_RETURN(auto q, db_->Prepare(absl::StrCat(
                               "SELECT ", kKeyColumns,
                               " FROM api_keys WHERE id = ?")));
  q.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, q.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("key_id: no such key ", id));
  return ReadKey(q);
}

absl::Status Store::PutCheckpointFile(const std::string& job_id, int64_t step,
                                      int32_t attempt,
                                      const v1::ResultFile& file) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(auto recorded, db_->Prepare("SELECT 1 FROM checkpoints WHERE "
                                               "job_id = ? AND step = ?"));
  recorded.Bind(1, job_id).Bind(2, step);
  ASSIGN_OR_RETURN(bool exists, recorded.Step());
  if (exists) {
    // Its files are what a resume reads and a user downloads: they stay.
    // The same file sent again (a report repeated after a lost ack) is
    // already there.
    ASSIGN_OR_RETURN(auto same, db_->Prepare("SELECT 1 FROM checkpoint_files WHERE "
                                             "job_id = ? AND step = ? AND name = ? "
                                             "AND sha256 = ?"));
    same.Bind(1, job_id).Bind(2, step).Bind(3, file.name()).Bind(4, file.sha256());
    ASSIGN_OR_RETURN(bool identical, same.Step());
    if (identical) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", step, " of ", job_id, " is already recorded"));
  }
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "INSERT INTO checkpoint_files (job_id, step, "
                                  "attempt, name, bytes, sha256) VALUES "
                                  "(?,?,?,?,?,?) ON CONFLICT(job_id, step, "
                                  "name) DO UPDATE SET attempt = "
                                  "excluded.attempt, bytes = excluded.bytes, "
                                  "sha256 = excluded.sha256"));
  stmt.Bind(1, job_id).Bind(2, step).Bind(3, static_cast<int64_t>(attempt));
  stmt.Bind(4, file.name()).Bind(5, file.bytes()).Bind(6, file.sha256());
  RETURN_IF_ERROR(stmt.Run());
  return tx->Commit();
}

absl::Status Store::RecordCheckpoint(const std::string& job_id, int64_t step,
                                     int32_t attempt,
                                     const std::vector<std::string>& files,
                                     const v1::CheckpointMetrics& metrics) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  RETURN_IF_ERROR(
      RecordCheckpointLocked(job_id, step, attempt, files, metrics));
  return tx->Commit();
}

absl::Status Store::RecordCheckpointLocked(
    const std::string& job_id, int64_t step, int32_t attempt,
    const std::vector<std::string>& files,
    const v1::CheckpointMetrics& metrics) {
  for (const std::string& name : files) {
    ASSIGN_OR_RETURN(auto q, db_->Prepare("SELECT 1 FROM checkpoint_files WHERE "
                                          "job_id = ? AND step = ? AND "
                                          "name = ? AND attempt = ?"));
    q.Bind(1, job_id).Bind(2, step).Bind(3, name).Bind(4, static_cast<int64_t>(attempt));
    ASSIGN_OR_RETURN(bool there, q.Step());
    if (!there) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", step, " of ", job_id, ": ", name, " was not uploaded"));
    }
  }
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "INSERT INTO checkpoints (job_id, step, "
                                  "attempt, created_at, metrics) VALUES "
                                  "(?,?,?,?,?) ON CONFLICT DO NOTHING"));
  stmt.Bind(1, job_id).Bind(2, step).Bind(3, static_cast<int64_t>(attempt));
  stmt.Bind(4, NowUnixSeconds()).BindBlob(5, metrics.SerializeAsString());
  RETURN_IF_ERROR(stmt.Run());
  if (db_->Changes() > 0) {
    v1::JobEvent ev;
    ev.set_level("info");
    ev.set_type("message");
    ev.set_message(absl::StrCat("Checkpoint saved at step ", step));
    RETURN_IF_ERROR(InsertEvent(job_id, ev, 0, 0).status());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::Checkpoint>> Store::ListCheckpoints(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(LoadJob(job_id).status());
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "SELECT c.step, c.attempt, c.created_at, "
                                  "c.metrics, f.name, f.bytes, f.sha256 FROM "
                                  "checkpoints c JOIN checkpoint_files f ON "
                                  "f.job_id = c.job_id AND f.step = c.step "
                                  "WHERE c.job_id = ? ORDER BY c.step, f.name"));
  stmt.Bind(1, job_id);
  std::vector<v1::Checkpoint> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    int64_t step = stmt.ColumnInt(0);
    if (out.empty() || out.back().step_number() != step) {
      v1::Checkpoint c;
      c.set_id(absl::StrCat("ftckpt-", job_id.substr(job_id.find('-') + 1), "-", step));
      c.set_job_id(job_id);
      c.set_step_number(step);
      c.set_attempt(static_cast<int32_t>(stmt.ColumnInt(1)));
      c.set_created_at(stmt.ColumnInt(2));
      c.mutable_metrics()->ParseFromString(stmt.ColumnBlob(3));
      out.push_back(std::move(c));
    }
    auto* f = out.back().add_files();
    f->set_name(stmt.ColumnText(4));
    f->set_bytes(stmt.ColumnInt(5));
    f->set_sha256(stmt.ColumnText(6));
  }
  return out;
}

absl::StatusOr<v1::Model> Store::RegisterModel(const v1::Model& model) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(auto q, db_->Prepare("SELECT path, created_at FROM models "
                                        "WHERE name = ?"));
  q.Bind(1, model.id());
  ASSIGN_OR_RETURN(bool exists, q.Step());
  v1::Model stored = model;
  stored.set_kind("base");
  stored.set_created_at(NowUnixSeconds());
  if (exists) {
    if (q.ColumnText(0) != model.path()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "name: model \"", model.id(), "\" is already registered for ",
          q.ColumnText(0)));
    }
    stored.set_created_at(q.ColumnInt(1));
  }
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "INSERT INTO models (name, path, created_at, "
                                  "info) VALUES (?,?,?,?) ON CONFLICT(name) DO "
                                  "UPDATE SET info = excluded.info"));
  stmt.Bind(1, stored.id()).Bind(2, stored.path()).Bind(3, stored.created_at());
  stmt.BindBlob(4, stored.SerializeAsString());
  RETURN_IF_ERROR(stmt.Run());
  RETURN_IF_ERROR(tx->Commit());
  return stored;
}

absl::StatusOr<v1::Model> Store::GetModel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("SELECT info FROM models WHERE name = ?"));
  stmt.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (row) {
    v1::Model m;
    if (!m.ParseFromString(stmt.ColumnBlob(0))) {
      return absl::DataLossError(absl::StrCat("model ", id, ": corrupt record"));
    }
    return m;
  }
  ASSIGN_OR_RETURN(auto ft, db_->Prepare("SELECT id FROM jobs WHERE "
                                         "fine_tuned_model = ? AND status = ?"));
  ft.Bind(1, id).Bind(2, static_cast<int64_t>(v1::JOB_STATUS_SUCCEEDED));
  ASSIGN_OR_RETURN(bool found, ft.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("no such model: ", id));
  ASSIGN_OR_RETURN(v1::Job job, LoadJob(ft.ColumnText(0)));
  return FineTunedModel(job);
}

v1::Model Store::FineTunedModel(const v1::Job& job) {
  v1::Model m;
  m.set_id(job.fine_tuned_model());
  m.set_kind("fine-tuned");
  m.set_created_at(job.finished_at());
  m.set_base_model(job.model());
  m.set_job_id(job.id());
  for (const auto& f : job.result_files()) {
    auto* mf = m.add_files();
    mf->set_name(f.name());
    mf->set_bytes(f.bytes());
    mf->set_sha256(f.sha256());
    m.set_bytes(m.bytes() + f.bytes());
  }
  return m;
}

absl::StatusOr<std::vector<v1::Model>> Store::ListModels(
    const std::string& project) {
  absl::MutexLock lock(&mu_);
  std::vector<v1::Model> out;
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("SELECT info FROM models ORDER BY name"));
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    v1::Model m;
    if (!m.ParseFromString(stmt.ColumnBlob(0))) {
      return absl::DataLossError("corrupt model record");
    }
    out.push_back(std::move(m));
  }
  ASSIGN_OR_RETURN(auto ft, db_->Prepare("SELECT id FROM jobs WHERE status = ? "
                                         "AND project = ? AND "
                                         "fine_tuned_model != '' "
                                         "ORDER BY seq DESC"));
  ft.Bind(1, static_cast<int64_t>(v1::JOB_STATUS_SUCCEEDED)).Bind(2, project);
  std::vector<std::string> ids;
  while (true) {
    ASSIGN_OR_RETURN(bool row, ft.Step());
    if (!row) break;
    ids.push_back(ft.ColumnText(0));
  }
  for (const auto& id : ids) {
    ASSIGN_OR_RETURN(v1::Job job, LoadJob(id));
    out.push_back(FineTunedModel(job));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> Store::DeleteFineTunedModel(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(auto cleared,
                   db_->Prepare("UPDATE jobs SET fine_tuned_model = '' WHERE "
                                "id = ? AND fine_tuned_model != ''"));
  cleared.Bind(1, job_id);
  RETURN_IF_ERROR(cleared.Run());
  if (db_->Changes() == 0) {
    return absl::NotFoundError(
        absl::StrCat("job ", job_id, " has no fine-tuned model"));
  }
  ASSIGN_OR_RETURN(auto files, db_->Prepare(
                                   "SELECT sha256 FROM result_files WHERE "
                                   "job_id = ?"));
  files.Bind(1, job_id);
  std::vector<std::string> blobs;
  while (true) {
    ASSIGN_OR_RETURN(bool row, files.Step());
    if (!row) break;
    blobs.push_back(files.ColumnText(0));
  }
  ASSIGN_OR_RETURN(auto gone,
                   db_->Prepare("DELETE FROM result_files WHERE job_id = ?"));
  gone.Bind(1, job_id);
  RETURN_IF_ERROR(gone.Run());
  RETURN_IF_ERROR(tx->Commit());
  return blobs;
}

absl::StatusOr<Store::Stats> Store::ReadStats() {
  absl::MutexLock lock(&mu_);
  Stats out;
  ASSIGN_OR_RETURN(auto jobs, db_->Prepare("SELECT project, status, COUNT(*) "
                                           "FROM jobs GROUP BY project, "
                                           "status"));
  while (true) {
    ASSIGN_OR_RETURN(bool row, jobs.Step());
    if (!row) break;
    out.jobs[{jobs.ColumnText(0),
              static_cast<v1::JobStatus>(jobs.ColumnInt(1))}] = jobs.ColumnInt(2);
  }
  ASSIGN_OR_RETURN(auto blobs, db_->Prepare(
                                   "SELECT COALESCE(SUM(bytes), 0) FROM ("
                                   "SELECT sha256, bytes FROM files UNION "
                                   "SELECT sha256, bytes FROM result_files "
                                   "UNION SELECT sha256, bytes FROM "
                                   "checkpoint_files)"));
  RETURN_IF_ERROR(blobs.Step().status());
  out.blob_bytes = blobs.ColumnInt(0);
  return out;
}

absl::StatusOr<std::optional<v1::Metrics>> Store::LatestMetrics(
    const std::string& job_id, int window) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare("SELECT data FROM events WHERE "
                                           "job_id = ? ORDER BY job_seq DESC "
                                           "LIMIT ?"));
  stmt.Bind(1, job_id).Bind(2, static_cast<int64_t>(window));
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    v1::JobEvent e;
    if (e.ParseFromString(stmt.ColumnBlob(0)) && e.type() == "metrics") {
      return std::optional<v1::Metrics>(e.metrics());
    }
  }
  return std::optional<v1::Metrics>();
}

void Store::SetCommitObserver(std::function<void(double seconds)> observer) {
  absl::MutexLock lock(&mu_);
  db_->SetCommitObserver(std::move(observer));
}

absl::StatusOr<Store::Created> Store::CreateJob(
    const v1::Job& job, const std::string& idempotency_key,
    const std::string& request_fingerprint, int max_in_flight) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  if (!idempotency_key.empty()) {
    ASSIGN_OR_RETURN(auto q, db_->Prepare("SELECT id, fingerprint FROM jobs "
                                          "WHERE idempotency_key = ?"));
    q.Bind(1, idempotency_key);
    ASSIGN_OR_RETURN(bool row, q.Step());
    if (row) {
      if (q.ColumnText(1) != request_fingerprint) {
        return absl::AlreadyExistsError(absl::StrCat(
            "idempotency_key: already used by job ", q.ColumnText(0),
            " with a different request"));
      }
      ASSIGN_OR_RETURN(v1::Job existing, LoadJob(q.ColumnText(0)));
      return Created{std::move(existing), false};
    }
  }
  const std::string project =
      job.project().empty() ? std::string("default") : job.project();
  // The files are checked in the insert's transaction: a concurrent
  // DeleteFile (which refuses while an unfinished job names the file) is
  // either before it (the create is refused) or after it (the delete is).
  const std::vector<std::pair<std::string, std::string>> files = JobFiles(job);
  for (const auto& [field, id] : files) {
    ASSIGN_OR_RETURN(
        auto f,
        db_->Prepare("SELECT 1 FROM files WHERE id = ? AND project = ?"));
    f.Bind(1, id).Bind(2, project);
    ASSIGN_OR_RETURN(bool found, f.Step());
    if (!found) {
      return absl::NotFoundError(
          absl::StrCat(field, ": no such file ", Echo(id)));
    }
  }
  if (max_in_flight > 0) {
    ASSIGN_OR_RETURN(auto count, db_->Prepare("SELECT COUNT(*) FROM jobs WHERE project = ? "
                                              "AND status NOT IN (?,?,?)"));
    count.Bind(1, project)
        .Bind(2, static_cast<int64_t>(v1::JOB_STATUS_SUCCEEDED))
        .Bind(3, static_cast<int64_t>(v1::JOB_STATUS_FAILED))
        .Bind(4, static_cast<int64_t>(v1::JOB_STATUS_CANCELLED));
    ASSIGN_OR_RETURN(bool row, count.Step());
    if (row && count.ColumnInt(0) >= max_in_flight) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "max_jobs_in_flight_per_project: project ", project, " already has ",
          count.ColumnInt(0), " unfinished jobs (the limit is ", max_in_flight,
          "); wait for some to finish or cancel some"));
    }
  }
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("INSERT INTO jobs (id, status, spec, "
                                "idempotency_key, fingerprint, project, "
                                "priority, memory_bytes, created_at, "
                                "training_file, validation_file, devices, "
                                "shared_memory_bytes, base_sha256) "
                                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"));
  stmt.Bind(1, job.id()).Bind(2, static_cast<int64_t>(job.status()));
  stmt.BindBlob(3, job.SerializeAsString());
  if (idempotency_key.empty()) {
    stmt.BindNull(4);
  } else {
    stmt.Bind(4, idempotency_key);
  }
  stmt.Bind(5, request_fingerprint);
  stmt.Bind(6, project);
  stmt.Bind(7, static_cast<int64_t>(job.priority()));
  stmt.Bind(8, job.memory_bytes()).Bind(9, job.created_at());
  stmt.Bind(10, job.training_file()).Bind(11, job.validation_file());
  stmt.Bind(12, static_cast<int64_t>(std::max(job.devices(), 1)));
  stmt.Bind(13, job.shared_memory_bytes()).Bind(14, job.base_sha256());
  RETURN_IF_ERROR(stmt.Run());
  for (const auto& [field, id] : files) {
    ASSIGN_OR_RETURN(auto jf, db_->Prepare("INSERT INTO job_files (job_id, "
                                           "field, file_id) VALUES (?,?,?)"));
    jf.Bind(1, job.id()).Bind(2, field).Bind(3, id);
    RETURN_IF_ERROR(jf.Run());
  }
  for (const auto& [key, value] : job.metadata()) {
    ASSIGN_OR_RETURN(auto md, db_->Prepare("INSERT INTO job_metadata (job_id, "
                                           "key, value) VALUES (?,?,?)"));
    md.Bind(1, job.id()).Bind(2, key).Bind(3, value);
    RETURN_IF_ERROR(md.Run());
  }
  v1::JobEvent ev;
  ev.set_level("info");
  ev.set_type("message");
  ev.set_message(absl::StrCat("Created fine-tuning job: ", job.id()));
  ev.set_status(v1::JOB_STATUS_VALIDATING_FILES);
  RETURN_IF_ERROR(InsertEvent(job.id(), ev, 0, 0).status());
  if (job.status() == v1::JOB_STATUS_QUEUED) {
    ev.set_message("Files validated; the job is queued");
    ev.set_status(v1::JOB_STATUS_QUEUED);
    RETURN_IF_ERROR(InsertEvent(job.id(), ev, 0, 0).status());
  }
  ASSIGN_OR_RETURN(v1::Job stored, LoadJob(job.id()));
  RETURN_IF_ERROR(tx->Commit());
  return Created{std::move(stored), true};
}

absl::StatusOr<v1::Job> Store::LoadJob(const std::string& id) {
  ASSIGN_OR_RETURN(
      auto s, db_->Prepare("SELECT spec, status, attempt, error, "
                           "fine_tuned_model, trained_tokens, steps_done, "
                           "steps_total, started_at, finished_at, seq, "
                           "attempt_started_ms, failures, resume_requested, "
                           "report FROM jobs WHERE id = ?"));
  s.Bind(1, id);
  ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no such job: ", id));
  v1::Job job;
  if (!job.ParseFromString(s.ColumnBlob(0))) {
    return absl::DataLossError(absl::StrCat("job ", id, ": corrupt spec"));
  }
  job.set_status(static_cast<v1::JobStatus>(s.ColumnInt(1)));
  job.set_attempt(static_cast<int32_t>(s.ColumnInt(2)));
  if (!s.ColumnIsNull(3)) job.mutable_error()->ParseFromString(s.ColumnBlob(3));
  job.set_fine_tuned_model(s.ColumnText(4));
  job.set_trained_tokens(s.ColumnInt(5));
  int64_t done = s.ColumnInt(6), total = s.ColumnInt(7);
  job.mutable_progress()->set_steps_done(done);
  job.mutable_progress()->set_steps_total(total);
  job.set_started_at(s.ColumnInt(8));
  job.set_finished_at(s.ColumnInt(9));
  int64_t attempt_started_ms = s.ColumnInt(11);
  job.set_failed_attempts(static_cast<int32_t>(s.ColumnInt(12)));
  job.set_resume_requested(s.ColumnInt(13) != 0);
  if (!s.ColumnIsNull(14)) job.mutable_report()->ParseFromString(s.ColumnBlob(14));
  if (job.status() == v1::JOB_STATUS_RUNNING && done > 0 && total > done &&
      attempt_started_ms > 0) {
    // Extrapolate from this attempt's pace (steps resumed from a checkpoint
    // are not in its elapsed time, so the estimate errs long).
    double elapsed_ms = static_cast<double>(NowUnixMillis() - attempt_started_ms);
    int64_t remaining =
        static_cast<int64_t>(elapsed_ms / done * (total - done) / 1000.0);
    job.mutable_progress()->set_seconds_remaining(remaining);
    job.set_estimated_finish(NowUnixSeconds() + remaining);
  }
  ASSIGN_OR_RETURN(auto rf, db_->Prepare("SELECT name, bytes, sha256 FROM "
                                         "result_files WHERE job_id = ? "
                                         "ORDER BY name"));
  rf.Bind(1, id);
  while (true) {
    ASSIGN_OR_RETURN(bool more, rf.Step());
    if (!more) break;
    auto* f = job.add_result_files();
    f->set_name(rf.ColumnText(0));
    f->set_bytes(rf.ColumnInt(1));
    f->set_sha256(rf.ColumnText(2));
  }
  return job;
}

absl::StatusOr<v1::Job> Store::GetJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return LoadJob(id);
}

absl::StatusOr<Page<v1::Job>> Store::ListJobs(
    const std::string& project, int limit, const std::string& after,
    v1::JobStatus status, const std::map<std::string, std::string>& metadata) {
  absl::MutexLock lock(&mu_);
  limit = ClampLimit(limit, 20, 100);
  ASSIGN_OR_RETURN(int64_t before_seq, CursorSeq("jobs", project, after));
  std::string sql =
      "SELECT id FROM jobs WHERE seq < ? AND (? = 0 OR status = ?) AND "
      "project = ?";
  for (size_t i = 0; i < metadata.size(); ++i) {
    sql += " AND EXISTS (SELECT 1 FROM job_metadata m WHERE m.job_id = "
           "jobs.id AND m.key = ? AND m.value = ?)";
  }
  sql += " ORDER BY seq DESC LIMIT ?";
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(sql));
  int i = 1;
  stmt.Bind(i++, before_seq).Bind(i++, static_cast<int64_t>(status));
  stmt.Bind(i++, static_cast<int64_t>(status));
  stmt.Bind(i++, project);
  for (const auto& [key, value] : metadata) stmt.Bind(i++, key).Bind(i++, value);
  stmt.Bind(i++, static_cast<int64_t>(limit + 1));
  std::vector<std::string> ids;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ids.push_back(stmt.ColumnText(0));
  }
  Page<v1::Job> page;
  page.has_more = static_cast<int>(ids.size()) > limit;
  if (page.has_more) ids.pop_back();
  for (const auto& id : ids) {
    ASSIGN_OR_RETURN(v1::Job job, LoadJob(id));
    page.data.push_back(std::move(job));
  }
  return page;
}

absl::StatusOr<std::vector<v1::Job>> Store::JobsInStatus(v1::JobStatus status) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare("SELECT id FROM jobs WHERE "
                                           "status = ? ORDER BY seq"));
  stmt.Bind(1, static_cast<int64_t>(status));
  std::vector<std::string> ids;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ids.push_back(stmt.ColumnText(0));
  }
  std::vector<v1::Job> jobs;
  for (const auto& id : ids) {
    ASSIGN_OR_RETURN(v1::Job job, LoadJob(id));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::StatusOr<Store::SchedulerInput> Store::ReadSchedulerInput() {
  absl::MutexLock lock(&mu_);
  SchedulerInput in;
  ASSIGN_OR_RETURN(in.queued, QueuedJobsLocked());
  ASSIGN_OR_RETURN(in.running_per_project, RunningPerProjectLocked());
  return in;
}

absl::StatusOr<std::vector<Store::QueueEntry>> Store::QueuedJobsLocked() {
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("SELECT id, seq, not_before_ms, project, "
                                "priority, memory_bytes, created_at, devices, "
                                "shared_memory_bytes, base_sha256 "
                                "FROM jobs WHERE status = ? ORDER BY seq"));
  stmt.Bind(1, static_cast<int64_t>(v1::JOB_STATUS_QUEUED));
  std::vector<QueueEntry> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    QueueEntry e;
    e.job_id = stmt.ColumnText(0);
    e.seq = stmt.ColumnInt(1);
    e.not_before_ms = stmt.ColumnInt(2);
    e.project = stmt.ColumnText(3);
    e.priority = static_cast<v1::JobPriority>(stmt.ColumnInt(4));
    e.memory_bytes = stmt.ColumnInt(5);
    e.created_at = stmt.ColumnInt(6);
    e.devices = static_cast<int>(stmt.ColumnInt(7));
    e.shared_memory_bytes = stmt.ColumnInt(8);
    e.base_sha256 = stmt.ColumnText(9);
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<std::map<std::string, int>> Store::RunningPerProjectLocked() {
  // A gang counts each of its workers, as placement counts it.
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("SELECT project, SUM(devices) FROM jobs "
                                "WHERE status IN (?, ?) "
                                "GROUP BY project"));
  stmt.Bind(1, static_cast<int64_t>(v1::JOB_STATUS_RUNNING));
  stmt.Bind(2, static_cast<int64_t>(v1::JOB_STATUS_CANCELLING));
  std::map<std::string, int> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out[stmt.ColumnText(0)] = static_cast<int>(stmt.ColumnInt(1));
  }
  return out;
}

absl::StatusOr<v1::Job> Store::Transition(const std::string& id,
                                          v1::JobStatus from, v1::JobStatus to,
                                          std::optional<int32_t> expect_attempt,
                                          const TransitionUpdate& update) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(v1::Job job,
                   TransitionLocked(id, from, to, expect_attempt, update));
  RETURN_IF_ERROR(tx->Commit());
  return job;
}

absl::StatusOr<v1::Job> Store::TransitionLocked(
    const std::string& id, v1::JobStatus from, v1::JobStatus to,
    std::optional<int32_t> expect_attempt, const TransitionUpdate& update) {
  if (!IsAllowedTransition(from, to)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " cannot go from ", StatusName(from), " to ",
                     StatusName(to)));
  }
  ASSIGN_OR_RETURN(
      auto stmt,
      db_->Prepare(
          "UPDATE jobs SET status = ?1,"
          " attempt = COALESCE(?2, attempt),"
          " worker_id = COALESCE(?3, worker_id),"
          " error = COALESCE(?4, error),"
          " fine_tuned_model = COALESCE(?5, fine_tuned_model),"
          " trained_tokens = COALESCE(?6, trained_tokens),"
          " started_at = CASE WHEN ?1 = ?9 AND started_at = 0 THEN ?7"
          "   ELSE started_at END,"
          " attempt_started_ms = CASE WHEN ?1 = ?9 THEN ?10"
          "   ELSE attempt_started_ms END,"
          " finished_at = CASE WHEN ?8 THEN ?7 ELSE finished_at END,"
          " not_before_ms = COALESCE(?14, not_before_ms),"
          " failures = failures + ?15,"
          " resume_requested = CASE WHEN ?1 = ?16 THEN resume_requested"
          "   ELSE 0 END,"
          " report = COALESCE(?17, report)"
          " WHERE id = ?11 AND status = ?12 AND (?13 IS NULL OR attempt = "
          "?13)"));
  stmt.Bind(1, static_cast<int64_t>(to));
  if (update.attempt) stmt.Bind(2, static_cast<int64_t>(*update.attempt));
  else stmt.BindNull(2);
  if (update.worker_id) stmt.Bind(3, *update.worker_id);
  else stmt.BindNull(3);
  if (update.error) stmt.BindBlob(4, update.error->SerializeAsString());
  else stmt.BindNull(4);
  if (update.fine_tuned_model) stmt.Bind(5, *update.fine_tuned_model);
  else stmt.BindNull(5);
  if (update.trained_tokens) stmt.Bind(6, *update.trained_tokens);
  else stmt.BindNull(6);
  stmt.Bind(7, NowUnixSeconds());
  stmt.Bind(8, static_cast<int64_t>(IsTerminal(to)));
  stmt.Bind(9, static_cast<int64_t>(v1::JOB_STATUS_RUNNING));
  stmt.Bind(10, NowUnixMillis());
  stmt.Bind(11, id).Bind(12, static_cast<int64_t>(from));
  if (expect_attempt)
    stmt.Bind(13, static_cast<int64_t>(*expect_attempt));
  else
    stmt.BindNull(13);
  if (update.not_before_ms)
    stmt.Bind(14, *update.not_before_ms);
  else
    stmt.BindNull(14);
  if (update.report) stmt.BindBlob(17, update.report->SerializeAsString());
  else stmt.BindNull(17);
  stmt.Bind(15, static_cast<int64_t>(update.count_failure ? 1 : 0));
  // Leaving `paused` by any path ends a pending resume request.
  stmt.Bind(16, static_cast<int64_t>(v1::JOB_STATUS_PAUSED));
  RETURN_IF_ERROR(stmt.Run());
  if (db_->Changes() == 0) {
    ASSIGN_OR_RETURN(v1::Job current, LoadJob(id));  // NOT_FOUND if absent
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " is ", StatusName(current.status()), " (attempt ",
        current.attempt(), "), not ", StatusName(from),
        expect_attempt ? absl::StrCat(" (attempt ", *expect_attempt, ")") : ""));
  }
  v1::JobEvent ev;
  ev.set_level(update.level);
  ev.set_type("message");
  ev.set_message(update.message.empty()
                     ? absl::StrCat("Job is ", StatusName(to))
                     : update.message);
  ev.set_status(to);
  RETURN_IF_ERROR(InsertEvent(id, ev, 0, 0).status());
  return LoadJob(id);
}

absl::StatusOr<v1::Job> Store::SetResumeRequested(const std::string& id,
                                                  int32_t attempt,
                                                  bool requested,
                                                  const std::string& message) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("UPDATE jobs SET resume_requested = ? WHERE "
                                "id = ? AND status = ? AND attempt = ? AND "
                                "resume_requested != ?"));
  stmt.Bind(1, static_cast<int64_t>(requested)).Bind(2, id);
  stmt.Bind(3, static_cast<int64_t>(v1::JOB_STATUS_PAUSED));
  stmt.Bind(4, static_cast<int64_t>(attempt))
      .Bind(5, static_cast<int64_t>(requested));
  RETURN_IF_ERROR(stmt.Run());
  if (db_->Changes() > 0) {
    v1::JobEvent ev;
    ev.set_level("info");
    ev.set_type("message");
    ev.set_message(message);
    RETURN_IF_ERROR(InsertEvent(id, ev, 0, 0).status());
  }
  ASSIGN_OR_RETURN(v1::Job job, LoadJob(id));
  if (job.status() != v1::JOB_STATUS_PAUSED || job.attempt() != attempt) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is ", StatusName(job.status()), " (attempt ",
                     job.attempt(), "), not paused (attempt ", attempt, ")"));
  }
  RETURN_IF_ERROR(tx->Commit());
  return job;
}

absl::Status Store::RecordAttemptReport(const AttemptReport& r) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  for (const AttemptEvent& e : r.events) {
    auto stored = InsertEvent(r.job_id, e.event, r.attempt, e.seq);
    if (!stored.ok() && !absl::IsAlreadyExists(stored.status())) return stored.status();
  }
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "UPDATE jobs SET steps_done = ?, "
                                  "steps_total = ?, trained_tokens = ? "
                                  "WHERE id = ? AND attempt = ?"));
  stmt.Bind(1, r.steps_done).Bind(2, r.steps_total).Bind(3, r.trained_tokens);
  stmt.Bind(4, r.job_id).Bind(5, static_cast<int64_t>(r.attempt));
  RETURN_IF_ERROR(stmt.Run());
  for (const AttemptReport::Checkpoint& c : r.checkpoints) {
    absl::Status st =
        RecordCheckpointLocked(r.job_id, c.step, r.attempt, c.files, c.metrics);
    if (absl::IsFailedPrecondition(st)) {
      // Files missing from this attempt: repeating the report cannot help.
      // The latest whole checkpoint stays the resume point.
      v1::JobEvent e;
      e.set_type("message");
      e.set_level("warn");
      e.set_message(absl::StrCat("Checkpoint at step ", c.step,
                                 " was not recorded: ", st.message()));
      RETURN_IF_ERROR(InsertEvent(r.job_id, e, 0, 0).status());
    } else if (!st.ok()) {
      return st;
    }
  }
  for (const v1::JobEvent& e : r.notes) {
    RETURN_IF_ERROR(InsertEvent(r.job_id, e, 0, 0).status());
  }
  if (r.status_change) {
    const AttemptReport::StatusChange& c = *r.status_change;
    RETURN_IF_ERROR(
        TransitionLocked(r.job_id, c.from, c.to, r.attempt, c.update).status());
  }
  return tx->Commit();
}

absl::StatusOr<v1::JobEvent> Store::InsertEvent(const std::string& job_id,
                                                v1::JobEvent event,
                                                int32_t attempt,
                                                int64_t attempt_seq) {
  event.set_created_at(NowUnixSeconds());
  event.clear_id();
  // The job's next number; the store's lock and the transaction keep it
  // unique (events_by_job_seq).
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("INSERT INTO events (job_id, attempt, "
                                "attempt_seq, data, job_seq) VALUES "
                                "(?1,?2,?3,?4,(SELECT COALESCE(MAX(job_seq), "
                                "0) + 1 FROM events WHERE job_id = ?1)) "
                                "ON CONFLICT DO NOTHING RETURNING job_seq"));
  stmt.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt));
  stmt.Bind(3, attempt_seq).BindBlob(4, event.SerializeAsString());
  ASSIGN_OR_RETURN(bool inserted, stmt.Step());
  if (!inserted) return absl::AlreadyExistsError("event already stored");
  event.set_id(EventId(job_id, stmt.ColumnInt(0)));
  RETURN_IF_ERROR(
      QueueWebhookDeliveriesLocked(job_id, stmt.ColumnInt(0), event));
  if (event_listener_) event_listener_(job_id);
  return event;
}

absl::StatusOr<v1::JobEvent> Store::AppendEvent(const std::string& job_id,
                                                const v1::JobEvent& event,
                                                int32_t attempt,
                                                int64_t attempt_seq) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tx, Transaction::Begin(*db_));
  ASSIGN_OR_RETURN(v1::JobEvent stored,
                   InsertEvent(job_id, event, attempt, attempt_seq));
  RETURN_IF_ERROR(tx->Commit());
  return stored;
}

absl::StatusOr<Page<v1::JobEvent>> Store::ListEvents(const std::string& job_id,
                                                     const std::string& after,
                                                     int limit) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(LoadJob(job_id).status());
  int64_t after_seq = 0;
  if (!after.empty()) {
    // Malformed, another job's, or not (yet) written: the same answer.
    auto seq = EventSeq(job_id, after);
    bool known = false;
    if (seq.ok()) {
      ASSIGN_OR_RETURN(auto q, db_->Prepare("SELECT 1 FROM events WHERE "
                                            "job_id = ? AND job_seq = ?"));
      q.Bind(1, job_id).Bind(2, *seq);
      ASSIGN_OR_RETURN(known, q.Step());
    }
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "after: not an event id of job ", job_id, ": '", Echo(after), "'"));
    }
    after_seq = *seq;
  }
  limit = ClampLimit(limit, 100, 1000);
  ASSIGN_OR_RETURN(auto stmt,
                   db_->Prepare("SELECT job_seq, data FROM events WHERE "
                                "job_id = ? AND job_seq > ? ORDER BY job_seq "
                                "LIMIT ?"));
  stmt.Bind(1, job_id).Bind(2, after_seq);
  stmt.Bind(3, static_cast<int64_t>(limit + 1));
  Page<v1::JobEvent> page;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    if (static_cast<int>(page.data.size()) == limit) {
      page.has_more = true;
      break;
    }
    v1::JobEvent ev;
    if (!ev.ParseFromString(stmt.ColumnBlob(1))) {
      return absl::DataLossError("corrupt event");
    }
    ev.set_id(EventId(job_id, stmt.ColumnInt(0)));
    page.data.push_back(std::move(ev));
  }
  return page;
}

void Store::SetEventListener(std::function<void(const std::string&)> listener) {
  absl::MutexLock lock(&mu_);
  event_listener_ = std::move(listener);
}

absl::Status Store::PutResultFile(const std::string& job_id,
                                  const v1::ResultFile& file) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "INSERT INTO result_files (job_id, name, "
                                  "bytes, sha256) VALUES (?,?,?,?) ON "
                                  "CONFLICT(job_id, name) DO UPDATE SET "
                                  "bytes = excluded.bytes, "
                                  "sha256 = excluded.sha256"));
  stmt.Bind(1, job_id).Bind(2, file.name()).Bind(3, file.bytes());
  stmt.Bind(4, file.sha256());
  return stmt.Run();
}

absl::StatusOr<std::vector<v1::ResultFile>> Store::ResultFiles(
    const std::string& job_id) {
  ASSIGN_OR_RETURN(v1::Job job, GetJob(job_id));
  return std::vector<v1::ResultFile>(job.result_files().begin(),
                                     job.result_files().end());
}

absl::StatusOr<absl::flat_hash_set<std::string>> Store::ReferencedBlobs() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "SELECT sha256 FROM files UNION "
                                  "SELECT sha256 FROM result_files UNION "
                                  "SELECT sha256 FROM checkpoint_files"));
  absl::flat_hash_set<std::string> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.insert(stmt.ColumnText(0));
  }
  return out;
}

absl::StatusOr<bool> Store::BlobReferenced(const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  return BlobReferencedLocked(sha256);
}

absl::StatusOr<bool> Store::BlobReferencedLocked(const std::string& sha256) {
  // The same tables as ReferencedBlobs(): a result or checkpoint file can
  // have the same bytes as an uploaded file.
  ASSIGN_OR_RETURN(auto stmt, db_->Prepare(
                                  "SELECT EXISTS (SELECT 1 FROM files WHERE "
                                  "sha256 = ?1) OR EXISTS (SELECT 1 FROM "
                                  "result_files WHERE sha256 = ?1) OR EXISTS "
                                  "(SELECT 1 FROM checkpoint_files WHERE "
                                  "sha256 = ?1)"));
  stmt.Bind(1, sha256);
  RETURN_IF_ERROR(stmt.Step().status());
  return stmt.ColumnInt(0) != 0;
}

namespace {

// What follows the job id's kind: "ftjob-AbC…" -> "AbC…".
absl::string_view JobIdSuffix(absl::string_view job_id) {
  size_t dash = job_id.find('-');
  return dash == absl::string_view::npos ? job_id : job_id.substr(dash + 1);
}

}  // namespace

std::string Store::EventId(const std::string& job_id, int64_t job_seq) {
  return absl::StrCat("ftevent-", JobIdSuffix(job_id), "-", job_seq);
}

absl::StatusOr<int64_t> Store::EventSeq(const std::string& job_id,
                                        const std::string& id) {
  absl::string_view n(id);
  int64_t seq = 0;
  if (!absl::ConsumePrefix(
          &n, absl::StrCat("ftevent-", JobIdSuffix(job_id), "-")) ||
      n.empty() || !std::all_of(n.begin(), n.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(n, &seq) || seq <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("after: not an event id of job ", job_id, ": '", Echo(id), "'"));
  }
  return seq;
}

}  // namespace lathe::store
