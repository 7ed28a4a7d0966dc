// Data-parallel training across processes on torch.distributed: LibTorch's
// own c10d TCPStore for the rendezvous and ProcessGroupGloo (CPU) or
// ProcessGroupNCCL (CUDA builds, CUDA devices) for the collectives. No
// collective of our own.
//
// A job on N workers runs the same loop on every rank. Each optimizer step
// takes the whole step's examples from the shared data cursor (the same on
// every rank: same seed, same order), and each rank computes its share of
// every micro-batch (Shard). The objective normalises its loss by its own
// share's weight w_r (target tokens for SFT, pairs for DPO); the gradients
// are then summed across ranks as sum_r w_r g_r / sum_r w_r, in buckets as
// DDP does (AllReduceGradients) — which is exactly the gradient of the
// whole step's loss normalised by the whole step's weight: N workers at
// batch b equal one worker at batch N·b, to float rounding. Every rank then
// clips and steps the same gradients, so the weights stay equal; rank 0
// writes the checkpoints and the result.
//
// Not thread-safe: the training thread calls it.
#ifndef LATHE_WORKER_ENGINE_DISTRIBUTED_DATA_PARALLEL_H_
#define LATHE_WORKER_ENGINE_DISTRIBUTED_DATA_PARALLEL_H_

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lathe::engine {

// The rendezvous of one attempt's ranks: rank 0 hosts a c10d TCPStore
// (Host), the others connect to its address (Connect). Keeps the store
// alive for the process group made from it.
class Rendezvous {
 public:
  // Listens on every interface at `port` (0: any free port) for a gang of
  // `world_size`. `timeout` bounds every wait on the store. UNAVAILABLE when
  // the port cannot be bound.
  static absl::StatusOr<std::shared_ptr<Rendezvous>> Host(
      int port, int world_size, absl::Duration timeout);
  // Connects to rank 0's store at "host:port" (or "[v6]:port").
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot be
  // reached within `timeout`.
  static absl::StatusOr<std::shared_ptr<Rendezvous>> Connect(
      const std::string& address, absl::Duration timeout);
  ~Rendezvous();

  int port() const;  // the store's port (Host: the one bound)
  absl::Duration timeout() const { return timeout_; }

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  Rendezvous(std::unique_ptr<Impl> impl, absl::Duration timeout);
  std::unique_ptr<Impl> impl_;
  absl::Duration timeout_;
};

struct DataParallelOptions {
  int rank = 0;
  int world_size = 1;
  // Where this rank's Gloo pairs listen: an address or host name of this
  // machine the other ranks can reach; empty = GLOO_SOCKET_IFNAME's
  // interface when set, else the address this host's name resolves to (as
  // torch.distributed does).
  std::string gloo_host;
  // Bound on each collective: a rank that does not take part in time (lost
  // or stuck) fails the step on every other rank.
  absl::Duration timeout = absl::Minutes(5);
};

class DataParallel {
 public:
  // Joins the process group of `rendezvous` as `options.rank`: waits for
  // every rank (up to the rendezvous' timeout). The backend is NCCL for a
  // CUDA `device` when LibTorch has it, Gloo otherwise. UNAVAILABLE when a
  // rank does not come, INVALID_ARGUMENT for a bad rank or size.
  static absl::StatusOr<std::unique_ptr<DataParallel>> Join(
      std::shared_ptr<Rendezvous> rendezvous, const DataParallelOptions& options,
      const torch::Device& device);
  ~DataParallel();

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  const char* backend() const;

  // This rank's share of each micro-batch: a contiguous part, the first
  // ranks taking one more when it does not divide (so rank 0's is empty
  // only when the micro-batch is). Empty micro-batches are left out.
  std::vector<std::vector<size_t>> Shard(
      const std::vector<std::vector<size_t>>& micro_batches) const;
  // Shard's rule for one micro-batch of `size`: [first, first + count).
  static void ShareOf(size_t size, int rank, int world_size, size_t* first,
                      size_t* count);

  // Sums `values` across ranks, in place.
  absl::Status SumInPlace(std::vector<double>& values);
  // The largest of each rank's `value`.
  absl::StatusOr<int64_t> Max(int64_t value);
  // Replaces each of `tensors` by rank 0's (the start of training: every
  // rank begins from exactly rank 0's weights, as DDP does).
  absl::Status Broadcast(const std::vector<torch::Tensor>& tensors);
  // Makes each tensor's gradient sum_r (weight_r · grad_r) / sum_r weight_r
  // across the ranks (an undefined gradient counts as zeros and is made),
  // in buckets of about `bucket_bytes`, all in flight at once. Returns
  // sum_r weight_r; with a total of 0 the gradients are left zero.
  absl::StatusOr<double> AllReduceGradients(
      const std::vector<torch::Tensor>& tensors, double weight,
      int64_t bucket_bytes = 25 << 20);

  // Named figures of a step averaged across ranks with `weight`: each rank
  // passes its own (an empty map from a rank whose share was empty); the
  // names are those of rank 0, which must have some when any rank has.
  absl::StatusOr<std::map<std::string, double>> WeightedMeans(
      const std::map<std::string, double>& values, double weight,
      double total_weight);

 private:
  struct Group;
  DataParallel(std::shared_ptr<Rendezvous> rendezvous,
               DataParallelOptions options, std::unique_ptr<Group> group);

  std::shared_ptr<Rendezvous> rendezvous_;
  const DataParallelOptions options_;
  std::unique_ptr<Group> group_;
  // The figures' names, once learnt from rank 0.
  std::vector<std::string> value_names_;
  bool names_known_ = false;
};

}  // namespace lathe::engine

#endif  // LATHE_WORKER_ENGINE_DISTRIBUTED_DATA_PARALLEL_H_
