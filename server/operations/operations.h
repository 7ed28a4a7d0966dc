// The server's operations, free of any transport. Each is a plain call,
// (caller, request) -> StatusOr<response> on the API's messages; uploads
// are sessions fed chunk by chunk. The transports (the gRPC services, the
// HTTP gateway) are thin adapters over the same operations, as
// tensorflow/serving's gRPC prediction service and its HTTP handler share
// one implementation: authenticate (server/auth.h), call the operation,
// convert its status in their one place. No rule is written twice.
//
// Thread-safe. Built into lathe_operations, which links no gRPC.
#ifndef LATHE_SERVER_OPERATIONS_OPERATIONS_H_
#define LATHE_SERVER_OPERATIONS_OPERATIONS_H_

#include "server/operations/admin_ops.h"
#include "server/operations/deps.h"
#include "server/operations/file_ops.h"
#include "server/operations/job_ops.h"
#include "server/operations/model_ops.h"
#include "server/operations/webhook_ops.h"
#include "server/operations/worker_ops.h"

namespace lathe {

struct Operations {
  // What `deps` points to must outlive this.
  explicit Operations(const OperationDeps& deps)
      : jobs(deps),
        files(deps),
        models(deps),
        admin(deps),
        worker(deps),
        webhooks(deps) {}

  JobOps jobs;
  FileOps files;
  ModelOps models;
  AdminOps admin;
  WorkerOps worker;
  WebhookOps webhooks;
};

}  // namespace lathe

#endif  // LATHE_SERVER_OPERATIONS_OPERATIONS_H_
