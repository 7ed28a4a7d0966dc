#include "server/grpc_adapter.h"

namespace lathe {

absl::Status SendFiles(const std::vector<Download>& files, int64_t chunk_bytes,
                       grpc::ServerWriter<v1::DownloadChunk>* writer) {
  for (const Download& d : files) {
    v1::DownloadChunk head;
    *head.mutable_file() = d.file;
    if (!writer->Write(head))
      return absl::CancelledError("the client went away");
    RETURN_IF_ERROR(StreamFileTo(d.path, chunk_bytes, writer));
  }
  return absl::OkStatus();
}

}  // namespace lathe
