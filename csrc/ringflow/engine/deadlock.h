// Deadlock found at once. Each rank announces the pending tensors its callers wait on (a
// blocking call, or synchronize() on a handle). A waited tensor can complete only when every
// rank still missing from it submits it, and a rank that waits submits nothing more until its
// wait ends. So the stuck ranks are the largest set S of waiting ranks in which every waited
// tensor still misses some rank of S: no rank of S can be the first to move. Every rank computes
// S from the same negotiation state and reaches the same verdict in the same round, long before
// the stall timeout (where Horovod hangs).
//
// Async submissions in flight raise no false alarm: a rank announces what it submitted before
// (or with) the waits that follow, and a tensor that misses a rank which is not waiting (it may
// still submit) keeps its waiters out of S. The one assumption, true of a program that calls
// ringflow from one thread: while a rank waits, it submits nothing from another thread.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ringflow/engine/tensor_table.h"

namespace rf {

// waits[r]: the pending tensors rank r's callers wait on; joined[r]: rank r called join() (it
// stands in for what it did not submit). Returns the error naming each stuck rank's call, as
// rank `rank` reports it, or nothing when no rank is stuck.
std::optional<std::string> find_deadlock(const TensorTable& table,
                                         const std::vector<std::vector<TensorKey>>& waits,
                                         const std::vector<bool>& joined, int rank);
// The same over several tables (a process set's own and the job-wide one, set_channels.h): a
// waited tensor is looked up in each.
std::optional<std::string> find_deadlock(const std::vector<const TensorTable*>& tables,
                                         const std::vector<std::vector<TensorKey>>& waits,
                                         const std::vector<bool>& joined, int rank);

}  // namespace rf
