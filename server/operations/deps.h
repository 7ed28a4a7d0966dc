// What the server's operations share: their settings and the objects they
// borrow. Plain data, free of any transport.
#ifndef LATHE_SERVER_OPERATIONS_DEPS_H_
#define LATHE_SERVER_OPERATIONS_DEPS_H_

#include <cstdint>

#include "server/coordinator.h"
#include "server/event_feed.h"
#include "server/job_request.h"
#include "server/store/blob_store.h"
#include "server/store/store.h"

namespace lathe {

// Constant after start (lathed's flags).
struct OperationOptions {
  int64_t max_upload_bytes = 1LL << 30;  // 1 GiB
  int64_t chunk_bytes = 256 << 10;       // download chunk size
  int64_t max_line_bytes = 4 << 20;      // per JSONL line
  int64_t max_examples_per_file = 1'000'000;
  int max_jobs_in_flight_per_project = 100;  // queued, running or paused
  int max_uploads_in_flight_per_key = 4;     // uploads open at once
  int max_uploads_in_flight = 8;             // of all keys together
  JobDefaults job_defaults;  // job resolution's operator settings
};

// All must outlive the operations that borrow them.
struct OperationDeps {
  store::Store* store;
  store::BlobStore* blobs;
  Coordinator* coordinator;
  EventFeed* feed;
  OperationOptions options;
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_DEPS_H_
