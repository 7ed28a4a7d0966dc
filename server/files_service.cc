#include "common/grpc_status.h"
#include "server/grpc_adapter.h"
#include "server/grpc_auth.h"
#include "server/services.h"

namespace lathe {
namespace {

// The upload's stream fed to its session; stored only when the client
// half-closed it.
absl::StatusOr<v1::File> ReceiveUpload(
    UploadSession& session, grpc::ServerContext* context,
    grpc::ServerReader<v1::UploadFileRequest>* reader) {
  RETURN_IF_ERROR(FeedUpload(reader, session));
  // Read() also ends when the call is cancelled or past its deadline: only
  // a stream the client half-closed is a whole file.
  if (context->IsCancelled()) return session.Abort();
  return session.Finish();
}

}  // namespace

grpc::Status FilesService::Upload(
    grpc::ServerContext* context,
    grpc::ServerReader<v1::UploadFileRequest>* reader, v1::File* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) -> absl::StatusOr<v1::File> {
        ASSIGN_OR_RETURN(auto session, deps_.ops->files.StartUpload(c));
        return ReceiveUpload(*session, context, reader);
      },
      response);
}

grpc::Status FilesService::GetFile(grpc::ServerContext* context,
                                   const v1::GetFileRequest* request,
                                   v1::File* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->files.GetFile(c, *request); },
      response);
}

grpc::Status FilesService::ListFiles(grpc::ServerContext* context,
                                     const v1::ListFilesRequest* request,
                                     v1::ListFilesResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->files.ListFiles(c, *request); },
      response);
}

grpc::Status FilesService::DeleteFile(grpc::ServerContext* context,
                                      const v1::DeleteFileRequest* request,
                                      v1::DeleteFileResponse* response) {
  return Respond(
      UserOf(*deps_.auth, *context),
      [&](const Caller& c) { return deps_.ops->files.DeleteFile(c, *request); },
      response);
}

grpc::Status FilesService::DownloadFile(
    grpc::ServerContext* context, const v1::DownloadFileRequest* request,
    grpc::ServerWriter<v1::FileContent>* writer) {
  auto caller = UserOf(*deps_.auth, *context);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto path = deps_.ops->files.DownloadFile(*caller, *request);
  if (!path.ok()) return ToGrpcStatus(path.status());
  return ToGrpcStatus(StreamFileTo(*path, deps_.chunk_bytes, writer));
}

}  // namespace lathe
