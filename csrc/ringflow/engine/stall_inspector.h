// The stall inspector: a tensor that some ranks submitted and others did not, for longer than
// RINGFLOW_STALL_CHECK_TIME, is reported (tensor names, missing ranks) once as a warning; after
// RINGFLOW_STALL_SHUTDOWN_TIME the engine fails every rank with the same description. Runs on
// every rank over its copy of the tensor table, so every rank reaches the verdict on its own.
#pragma once

#include <optional>
#include <string>

#include "ringflow/engine/tensor_table.h"

namespace rf {

struct StallOptions {
  double check_s = 60.0;
  double shutdown_s = 300.0;  // 0: never
};

// Logs warnings for newly stalled tensors; returns the failure message once a tensor has
// waited past shutdown_s.
std::optional<std::string> inspect_stalls(TensorTable& table, const StallOptions& options, int rank,
                                          SteadyClock::time_point now);

}  // namespace rf
