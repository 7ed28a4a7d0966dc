// A thin RAII layer over SQLite in the manner of Chromium's sql/: Database,
// Statement and Transaction. Only this layer includes sqlite3.h.
#ifndef LATHE_SERVER_STORE_DATABASE_H_
#define LATHE_SERVER_STORE_DATABASE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

struct sqlite3;
struct sqlite3_stmt;

namespace lathe::store {

class Statement;

// One SQLite connection. Not thread-safe: callers serialise access (the
// Store holds a mutex around every use).
class Database {
 public:
  // Opens (creating if needed) `path`; ":memory:" for tests. Sets WAL mode,
  // synchronous=FULL, foreign keys and a busy timeout.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs one or more statements that return no rows.
  absl::Status Execute(absl::string_view sql);
  // Compiles one statement. The Statement must not outlive this Database.
  absl::StatusOr<Statement> Prepare(absl::string_view sql);

  int64_t LastInsertRowId() const;
  int Changes() const;  // rows changed by the last statement
  // Called with each COMMIT's duration in seconds (the metrics' SQLite
  // commit latency). Set before the database is shared.
  void SetCommitObserver(std::function<void(double seconds)> observer) {
    commit_observer_ = std::move(observer);
  }
  const std::function<void(double)>& commit_observer() const {
    return commit_observer_;
  }

  // PRAGMA user_version, the schema's migration number.
  absl::StatusOr<int> UserVersion();

  sqlite3* raw() { return db_; }

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  std::function<void(double)> commit_observer_;
};

// A compiled statement. Bind* uses 1-based indices. Step() returns true
// while a row is available, false when done.
class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&&) = delete;
  ~Statement();

  Statement& Bind(int index, int64_t value);
  Statement& Bind(int index, double value);
  Statement& Bind(int index, absl::string_view text);
  Statement& BindBlob(int index, absl::string_view bytes);
  Statement& BindNull(int index);

  absl::StatusOr<bool> Step();
  // Steps a statement that returns no rows.
  absl::Status Run();

  int64_t ColumnInt(int col) const;
  double ColumnDouble(int col) const;
  std::string ColumnText(int col) const;
  std::string ColumnBlob(int col) const;
  bool ColumnIsNull(int col) const;

 private:
  friend class Database;
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

// BEGIN IMMEDIATE on construction; rolls back on destruction unless
// Commit() succeeded.
class Transaction {
 public:
  static absl::StatusOr<std::unique_ptr<Transaction>> Begin(Database& db);
  ~Transaction();
  absl::Status Commit();

 private:
  explicit Transaction(Database& db) : db_(db) {}
  Database& db_;
  bool done_ = false;
};

}  // namespace lathe::store

#endif  // LATHE_SERVER_STORE_DATABASE_H_
