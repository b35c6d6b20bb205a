// Where a set's members live (by set rank), for hierarchical allreduce. Asked on every
// allreduce, the inline ones included, so the last answer is kept: one loop of small calls asks
// for the same set each time, and building the grid costs a dozen allocations.
#include <string>
#include <vector>

#include "ringflow/collectives/select.h"
#include "ringflow/common/env.h"
#include "ringflow/common/log.h"
#include "ringflow/engine/engine.h"
#include "ringflow/transport/shm/collective_area.h"

namespace rf {

const HostLayout& Engine::set_layout(const std::vector<int>& members, int my_index) {
  if (my_index == layout_index_ && members == layout_members_) return layout_;
  layout_index_ = -1;  // until the new answer is complete
  HostLayout& layout = layout_;
  const std::vector<int>& host_of = runtime_->topology().host_of;
  if (env_config().hierarchical == "off" || host_of.size() != static_cast<size_t>(size_)) {
    layout = HostLayout{};
    layout_members_ = members;
    layout_index_ = my_index;
    return layout;
  }
  std::vector<int> member_hosts;
  for (int r : members) member_hosts.push_back(host_of[r]);
  layout = host_layout(member_hosts, my_index);
  layout.enabled = choose_hierarchical(layout);
  if (!layout.uniform && !told_uneven_) {
    told_uneven_ = true;  // every rank sees the same layout, so every rank falls back alike
    const std::string why = "rank " + std::to_string(rank_) +
                            ": the hosts hold different numbers of this set's ranks: allreduce "
                            "takes the flat algorithms, not hierarchical";
    if (env_config().hierarchical == "on") {
      RF_LOG(kWarning) << why;
    } else {
      RF_LOG(kInfo) << why;
    }
  }
  layout_members_ = members;
  layout_index_ = my_index;
  return layout;
}

bool Engine::shares_memory(const std::vector<int>& members) {
  if (members == shared_members_) return shared_;
  // One host as the topology says too: ranks it places on several hosts (netlab, or a test's
  // stand-in hosts) take the hierarchical thresholds even where they could map each other.
  const std::vector<int>& host_of = runtime_->topology().host_of;
  bool one_host = true;
  if (host_of.size() == static_cast<size_t>(size_)) {
    for (int r : members) one_host = one_host && host_of[r] == host_of[members[0]];
  }
  shm::CollectiveAreas* areas = runtime_->transport().collective_areas();
  shared_ = one_host && areas && members.size() >= 2 && areas->covers(members) &&
            areas->slot_bytes(members) >= 64;
  shared_members_ = members;
  return shared_;
}

}  // namespace rf
