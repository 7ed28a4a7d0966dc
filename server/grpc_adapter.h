// What the gRPC services share to stay thin: answering a unary call from an
// operation's result, feeding a client stream to an upload session, and
// streaming downloads. The status is converted in one place (ToGrpcStatus).
#ifndef LATHE_SERVER_GRPC_ADAPTER_H_
#define LATHE_SERVER_GRPC_ADAPTER_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/sync_stream.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "lathe/v1/fine_tuning.pb.h"
#include "server/operations/download.h"

namespace lathe {

// The unary call's answer: `op(*caller)`'s value in `response`, or the
// first error.
template <typename Who, typename Response, typename Op>
grpc::Status Respond(const absl::StatusOr<Who>& caller, Op&& op,
                     Response* response) {
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<Response> r = std::forward<Op>(op)(*caller);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

// Feeds a client stream of `{header | chunk}` messages to `session`
// (UploadSession, ResultUpload) until the stream ends or the session
// refuses one. The first message is the header and every later one a
// chunk; one that is neither is refused as what it should have been.
template <typename Session, typename Message>
absl::Status FeedUpload(grpc::ServerReader<Message>* reader, Session& session) {
  Message msg;
  for (bool first = true; reader->Read(&msg); first = false) {
    bool header = first ? msg.has_header() : !msg.has_chunk();
    RETURN_IF_ERROR(header ? session.Begin(msg.header())
                           : session.Add(msg.chunk()));
  }
  return absl::OkStatus();
}

// StreamFile into a server stream of messages with a `data` bytes field.
template <typename Chunk>
absl::Status StreamFileTo(const std::string& path, int64_t chunk_bytes,
                          grpc::ServerWriter<Chunk>* writer) {
  return StreamFile(path, chunk_bytes, [&](absl::string_view data) {
    Chunk c;
    c.set_data(std::string(data));
    return writer->Write(c);
  });
}

// Sends each file as a header (name, size, SHA-256) then its bytes.
absl::Status SendFiles(const std::vector<Download>& files, int64_t chunk_bytes,
                       grpc::ServerWriter<v1::DownloadChunk>* writer);

}  // namespace lathe

#endif  // LATHE_SERVER_GRPC_ADAPTER_H_
