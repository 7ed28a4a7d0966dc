// What the fault suites share: a data directory checked as a fresh lathed
// would find it, probes that a dead attempt is fenced off, and the figures
// the README quotes.
#ifndef LATHE_TESTS_FAULT_UTIL_H_
#define LATHE_TESTS_FAULT_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "tests/cluster.h"
#include "tests/job_history.h"

namespace lathe::testing {

// The RNG seed of a suite: $LATHE_FAULT_SEED if set, else `fallback`.
// Printed, so a failing run can be replayed.
uint32_t FaultSeed(const std::string& suite, uint32_t fallback);

// Prints "FAULT-FIGURES: <suite>  <name>: <value>", the block the README
// quotes (ctest -L fault -V | grep FAULT-FIGURES).
void Figure(const std::string& suite, const std::string& name,
            const std::string& value);

// A data directory as a fresh lathed finds it.
struct DataDirState {
  bool integrity_ok = false;
  int referenced = 0;                  // blobs named by a record
  std::vector<std::string> bad_blobs;  // named but missing or wrong SHA-256
  std::vector<std::string> stray;      // blob files no record names
  std::vector<std::string> tmp;        // files left in tmp/
};
// Reads the database at `db_path` (the live one, or a Snapshot of a crashed
// one) and the blobs under `data_dir`. A blob is hashed once: `hashed`
// remembers names already checked (content-addressed files never change).
DataDirState InspectDataDir(const std::string& db_path, const std::string& data_dir,
                            absl::flat_hash_set<std::string>* hashed);

// Copies lathe.db and its WAL into `dir` and returns the copy's path, so a
// crashed database can be read without checkpointing its WAL (lathed's
// restart must recover it itself).
std::string SnapshotDatabase(const std::string& data_dir, const std::string& dir);

// Speaks for attempt `attempt` of `job_id` as its worker would after losing
// it: a report with an event, progress and a checkpoint, uploads of the
// adapter and of a checkpoint file, and fetches of its inputs. Expects
// every one refused (superseded / FAILED_PRECONDITION) and nothing of it
// stored. REQUIRES: the job has moved on to a later attempt. Returns how
// many late messages were refused.
int ExpectAttemptFenced(Cluster& c, const std::string& job_id, int32_t attempt,
                        const std::string& worker_id);

}  // namespace lathe::testing

#endif  // LATHE_TESTS_FAULT_UTIL_H_
