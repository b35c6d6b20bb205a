// The caller's side of one submitted request: done or not, the error it ended with, and the
// output the engine allocated when only negotiation could tell its size (allgather, alltoall).
// Finished handles answer without taking a lock, so synchronize() on one costs a load. Waiting
// is the engine's job (Engine::wait drives it), not the handle's.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "ringflow/common/error.h"

namespace rf {

// A buffer the engine allocates for a result; not zero-filled (it is overwritten whole).
struct OwnedBuffer {
  std::unique_ptr<char[]> data;
  size_t bytes = 0;
  void allocate(size_t n) {
    data.reset(new char[n > 0 ? n : 1]);
    bytes = n;
  }
};

class Handle {
 public:
  bool done() const { return done_.load(std::memory_order_acquire); }
  // Throws the stored error, if any (only after done()).
  void rethrow() const;

  // Set by the engine, before complete().
  OwnedBuffer output;
  std::vector<int64_t> output_shape;
  std::vector<int64_t> received_splits;  // alltoall
  int64_t value = 0;                     // add_process_set: the new set's id
  // The tensor's key (process set, name hash): a caller waiting on it announces it (deadlock.h).
  int32_t process_set = 0;
  uint64_t name_hash = 0;

  void complete();
  void fail(const Error& error);

 private:
  std::atomic<bool> done_{false};
  std::optional<Error> error_;
  std::mutex mutex_;  // orders a failure's error before done
};

using HandlePtr = std::shared_ptr<Handle>;

}  // namespace rf
