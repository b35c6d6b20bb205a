#include "ringflow/engine/process_sets.h"

#include <algorithm>
#include <numeric>

#include "ringflow/common/check.h"

namespace rf {

ProcessSetTable::ProcessSetTable(int world_size) {
  std::vector<int> everyone(world_size);
  std::iota(everyone.begin(), everyone.end(), 0);
  sets_[0] = everyone;
}

int ProcessSetTable::add(const std::vector<int>& ranks) {
  const int id = next_id_++;
  sets_[id] = ranks;
  ++version_;
  return id;
}

void ProcessSetTable::remove(int id) {
  RF_CHECK(id != 0, kInvalidArgument) << "the global process set cannot be removed";
  sets_.erase(id);
  ++version_;
}

const std::vector<int>& ProcessSetTable::ranks(int id) const {
  auto it = sets_.find(id);
  RF_CHECK(it != sets_.end(), kInvalidArgument)
      << "process set " << id << " does not exist (never added, or removed)";
  return it->second;
}

int ProcessSetTable::index_of(int id, int rank) const {
  const std::vector<int>& members = ranks(id);
  auto it = std::lower_bound(members.begin(), members.end(), rank);
  return it != members.end() && *it == rank ? static_cast<int>(it - members.begin()) : -1;
}

}  // namespace rf
