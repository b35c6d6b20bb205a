// The negotiation state every rank keeps alike: for each tensor some rank has announced, which
// members of its process set have announced it and with what descriptor. A tensor is ready when
// every member has; a grouped tensor when its whole group is. Ready tensors leave the table in
// the order they were first announced, so every rank executes them in the same order.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "ringflow/engine/negotiation.h"
#include "ringflow/engine/response_cache.h"

namespace rf {

using SteadyClock = std::chrono::steady_clock;

struct PendingTensor {
  TensorKey key;
  std::string name;  // as announced (at most kDescriptorNameBytes - 1 characters)
  OpKind kind = OpKind::kBarrier;
  std::vector<int> members;           // global ranks, sorted
  std::vector<Descriptor> by_member;  // valid where announced[i]
  std::vector<bool> announced;
  int missing = 0;
  std::vector<std::vector<char>> inline_data;  // by member: small allreduce data, if sent
  std::vector<bool> has_inline_data;
  std::vector<bool> stand_in;  // by member: a joined rank, contributing zeros (or no rows)
  int last_announcer = -1;     // the rank whose announcement completed it (join's result)

  int contributors() const;  // members that announced it themselves
  SteadyClock::time_point first_seen;
  bool warned = false;

  std::vector<int> missing_ranks() const;
  std::vector<int> announced_ranks() const;
};

class TensorTable {
 public:
  // `rank` announced d; `members` are the ranks that must. Throws kPeerFailure for a rank
  // announcing a tensor twice or one whose set it is not in (no ringflow rank does that).
  void announce(const Descriptor& d, int rank, const std::vector<int>& members,
                SteadyClock::time_point now);
  // The data `rank` sent along with its announcement of `key` (announced this round or before).
  void attach_inline_data(const TensorKey& key, int rank, const std::vector<char>& bytes);
  // Removes and returns the ready tensors, in first-announcement order. A tensor that waits only
  // for `joined` ranks is ready too: they stand in with the descriptor of its first announcer
  // (no rows for an allgather).
  std::vector<PendingTensor> take_ready(const std::vector<bool>& joined);
  std::map<uint64_t, PendingTensor>& pending() { return by_order_; }
  const std::map<uint64_t, PendingTensor>& pending() const { return by_order_; }
  // The pending tensor with this key, or null.
  const PendingTensor* find(const TensorKey& key) const;
  // Removes and returns the tensors whose set holds a rank with gone[rank] (it left the job).
  std::vector<PendingTensor> take_involving(const std::vector<bool>& gone);
  bool empty() const { return by_order_.empty(); }
  size_t size() const { return by_order_.size(); }
  // Hands back a tensor taken from the table once it has run: its vectors and the map nodes
  // serve the next announcement (a loop of small calls allocates none of them again).
  void recycle(PendingTensor&& tensor);
  // Hands back the list take_ready returned, for the next one to reuse.
  void reuse_list(std::vector<PendingTensor>&& list) {
    list.clear();
    ready_list_ = std::move(list);
  }

 private:
  using OrderNode = std::map<uint64_t, PendingTensor>::node_type;
  using KeyNode = std::unordered_map<TensorKey, uint64_t, TensorKeyHash>::node_type;
  std::map<uint64_t, PendingTensor> by_order_;
  std::unordered_map<TensorKey, uint64_t, TensorKeyHash> order_of_;
  uint64_t next_order_ = 0;
  std::vector<OrderNode> spare_tensors_;  // empty nodes, or ones holding a recycled tensor
  std::vector<KeyNode> spare_keys_;
  std::vector<PendingTensor> ready_list_;
};

}  // namespace rf
