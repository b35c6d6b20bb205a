// The one place that chooses an algorithm: thresholds measured on a 2-core loopback machine
// (see docs/performance.md), each overridable by environment variable.
#pragma once

#include <cstddef>

namespace rf {

enum class AllreduceAlgorithm { kRing, kBruck };
enum class BroadcastAlgorithm { kBinomial, kChain };

// RINGFLOW_ALLREDUCE_ALGORITHM=auto|ring|bruck; auto picks bruck while (N - 1) x bytes, what
// it makes each rank receive, is at most RINGFLOW_BRUCK_MAX_BYTES (64 KiB).
AllreduceAlgorithm choose_allreduce(size_t bytes, int size);
// RINGFLOW_BROADCAST_ALGORITHM=auto|binomial|chain; auto picks chain from RINGFLOW_CHAIN_MIN_BYTES.
BroadcastAlgorithm choose_broadcast(size_t bytes, int size);

}  // namespace rf
