// Settings that shape what every rank plans alone — fusion buckets, inline data, the response
// cache, algorithm choice, segment sizes — must be equal on every rank, or ranks would number
// operations differently and meet on the wrong data. init() compares them once.
#pragma once

#include "ringflow/collectives/collective.h"

namespace rf {

// Gathers every rank's plan-shaping RINGFLOW_* settings; throws kMismatch naming the variable
// and each rank's value when they differ.
void check_settings_agree(const CollectiveContext& ctx);

}  // namespace rf
