#include "ringflow/engine/stall_inspector.h"

#include <sstream>

#include "ringflow/common/log.h"

namespace rf {

namespace {

std::string rank_list(const std::vector<int>& ranks) {
  std::ostringstream text;
  for (size_t i = 0; i < ranks.size(); ++i) text << (i ? ", " : "") << "rank " << ranks[i];
  return text.str();
}

std::string describe(const PendingTensor& tensor) {
  return std::string(op_kind_name(tensor.kind)) + " of tensor '" + tensor.name + "' submitted by " +
         rank_list(tensor.announced_ranks()) + " but not by " + rank_list(tensor.missing_ranks());
}

}  // namespace

std::optional<std::string> inspect_stalls(TensorTable& table, const StallOptions& options, int rank,
                                          SteadyClock::time_point now) {
  std::ostringstream warning;
  int newly_stalled = 0;
  for (auto& [order, tensor] : table.pending()) {
    const double waited = std::chrono::duration<double>(now - tensor.first_seen).count();
    if (options.shutdown_s > 0 && waited >= options.shutdown_s) {
      std::ostringstream failure;
      failure << "rank " << rank << ": ringflow stalled for " << waited << " s ("
              << "RINGFLOW_STALL_SHUTDOWN_TIME " << options.shutdown_s
              << " s): " << describe(tensor)
              << ". Every rank must submit every collective (missing ranks may have exited, "
                 "hung, or called collectives in another order)";
      return failure.str();
    }
    if (!tensor.warned && options.check_s > 0 && waited >= options.check_s) {
      tensor.warned = true;
      warning << (newly_stalled++ ? "; " : "") << describe(tensor);
    }
  }
  if (newly_stalled > 0) {
    RF_LOG(kWarning) << "rank " << rank << ": stalled for more than " << options.check_s
                     << " s (RINGFLOW_STALL_CHECK_TIME), waiting on ranks that have not "
                        "submitted: "
                     << warning.str();
  }
  return std::nullopt;
}

}  // namespace rf
