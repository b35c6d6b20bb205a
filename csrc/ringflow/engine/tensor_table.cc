#include "ringflow/engine/tensor_table.h"

#include <algorithm>
#include <cstring>
#include <tuple>

#include "ringflow/common/check.h"

namespace rf {

std::vector<int> PendingTensor::missing_ranks() const {
  std::vector<int> ranks;
  for (size_t i = 0; i < members.size(); ++i) {
    if (!announced[i]) ranks.push_back(members[i]);
  }
  return ranks;
}

std::vector<int> PendingTensor::announced_ranks() const {
  std::vector<int> ranks;
  for (size_t i = 0; i < members.size(); ++i) {
    if (announced[i]) ranks.push_back(members[i]);
  }
  return ranks;
}

namespace {

constexpr size_t kSpareNodes = 16;  // enough for a loop; a burst is not kept

}  // namespace

void TensorTable::announce(const Descriptor& d, int rank, const std::vector<int>& members,
                           SteadyClock::time_point now) {
  const TensorKey key = key_of(d);
  auto found = order_of_.find(key);
  if (found == order_of_.end()) {
    OrderNode node;
    if (spare_tensors_.empty()) {
      node = std::map<uint64_t, PendingTensor>{{0, PendingTensor{}}}.extract(0);
    } else {
      node = std::move(spare_tensors_.back());
      spare_tensors_.pop_back();
    }
    // Assigned field by field: a recycled tensor's vectors keep their capacity.
    const size_t n = members.size();
    PendingTensor& tensor = node.mapped();
    tensor.key = key;
    tensor.name.assign(d.name, strnlen(d.name, kDescriptorNameBytes));
    tensor.kind = static_cast<OpKind>(d.kind);
    tensor.members.assign(members.begin(), members.end());
    tensor.by_member.resize(n);
    tensor.announced.assign(n, false);
    tensor.missing = static_cast<int>(n);
    tensor.inline_data.resize(n);
    for (std::vector<char>& data : tensor.inline_data) data.clear();
    tensor.has_inline_data.assign(n, false);
    tensor.stand_in.assign(n, false);
    tensor.last_announcer = -1;
    tensor.first_seen = now;
    tensor.warned = false;
    node.key() = next_order_;
    if (spare_keys_.empty()) {
      found = order_of_.emplace(key, next_order_).first;
    } else {
      KeyNode key_node = std::move(spare_keys_.back());
      spare_keys_.pop_back();
      key_node.key() = key;
      key_node.mapped() = next_order_;
      found = order_of_.insert(std::move(key_node)).position;
    }
    by_order_.insert(std::move(node));
    ++next_order_;
  }
  PendingTensor& tensor = by_order_.at(found->second);
  auto it = std::lower_bound(tensor.members.begin(), tensor.members.end(), rank);
  RF_CHECK(it != tensor.members.end() && *it == rank, kPeerFailure)
      << "rank " << rank << " announced tensor '" << tensor.name
      << "' of a process set it is not in (process sets must be added on every rank in the "
         "same order)";
  const size_t index = static_cast<size_t>(it - tensor.members.begin());
  RF_CHECK(!tensor.announced[index], kPeerFailure)
      << "rank " << rank << " announced tensor '" << tensor.name << "' twice";
  tensor.by_member[index] = d;
  tensor.announced[index] = true;
  tensor.last_announcer = rank;
  --tensor.missing;
}

void TensorTable::recycle(PendingTensor&& tensor) {
  if (tensor.members.capacity() == 0) return;  // moved from already
  // Small inline buffers are what a loop reuses; a large one is not kept for later.
  constexpr size_t kKeptInlineBytes = 1 << 10;
  for (std::vector<char>& data : tensor.inline_data) {
    if (data.capacity() > kKeptInlineBytes) std::vector<char>().swap(data);
  }
  for (OrderNode& node : spare_tensors_) {
    if (node.mapped().members.capacity() == 0) {  // holds a moved-from tensor
      node.mapped() = std::move(tensor);
      return;
    }
  }
}

void TensorTable::attach_inline_data(const TensorKey& key, int rank,
                                     const std::vector<char>& bytes) {
  auto found = order_of_.find(key);
  RF_CHECK(found != order_of_.end(), kPeerFailure)
      << "rank " << rank << " sent data for a tensor it did not announce";
  PendingTensor& tensor = by_order_.at(found->second);
  auto it = std::lower_bound(tensor.members.begin(), tensor.members.end(), rank);
  const size_t index = static_cast<size_t>(it - tensor.members.begin());
  RF_CHECK(it != tensor.members.end() && *it == rank && tensor.announced[index] &&
               bytes.size() == descriptor_elements(tensor.by_member[index]) *
                                   dtype_size(static_cast<DType>(tensor.by_member[index].dtype)),
           kPeerFailure)
      << "rank " << rank << " sent data that does not match its announcement of tensor '"
      << tensor.name << "'";
  tensor.inline_data[index].assign(bytes.begin(), bytes.end());
  tensor.has_inline_data[index] = true;
}

const PendingTensor* TensorTable::find(const TensorKey& key) const {
  auto found = order_of_.find(key);
  return found == order_of_.end() ? nullptr : &by_order_.at(found->second);
}

std::vector<PendingTensor> TensorTable::take_involving(const std::vector<bool>& gone) {
  std::vector<PendingTensor> taken;
  for (auto it = by_order_.begin(); it != by_order_.end();) {
    const std::vector<int>& members = it->second.members;
    if (std::none_of(members.begin(), members.end(), [&](int r) { return gone[r]; })) {
      ++it;
      continue;
    }
    order_of_.erase(it->second.key);
    taken.push_back(std::move(it->second));
    it = by_order_.erase(it);
  }
  return taken;
}

int PendingTensor::contributors() const {
  int count = 0;
  for (bool s : stand_in) count += s ? 0 : 1;
  return count;
}

std::vector<PendingTensor> TensorTable::take_ready(const std::vector<bool>& joined) {
  for (auto& [order, tensor] : by_order_) {
    if (tensor.missing == 0 || tensor.kind == OpKind::kJoin ||
        tensor.missing == static_cast<int>(tensor.members.size())) {
      continue;
    }
    bool only_joined = true;
    for (int r : tensor.missing_ranks()) only_joined = only_joined && joined[r];
    if (!only_joined) continue;
    size_t first = 0;
    while (!tensor.announced[first]) ++first;
    for (size_t i = 0; i < tensor.members.size(); ++i) {
      if (tensor.announced[i]) continue;
      tensor.by_member[i] = tensor.by_member[first];
      if (tensor.kind == OpKind::kAllgather && tensor.by_member[i].ndim > 0) {
        tensor.by_member[i].dims[0] = 0;
      }
      tensor.stand_in[i] = true;
    }
    tensor.missing = 0;
  }
  // Members of a group leave together: count each group's ready members first.
  auto group_of = [](const Descriptor& d) {
    return std::make_tuple(d.process_set, d.kind, d.group_hash);
  };
  std::map<std::tuple<int32_t, uint8_t, uint64_t>, uint32_t> group_ready;
  for (const auto& [order, tensor] : by_order_) {
    if (tensor.missing == 0 && tensor.by_member[0].group_size > 1) {
      ++group_ready[group_of(tensor.by_member[0])];
    }
  }
  std::vector<PendingTensor> ready = std::move(ready_list_);
  ready.clear();
  for (auto it = by_order_.begin(); it != by_order_.end();) {
    const PendingTensor& tensor = it->second;
    bool take = tensor.missing == 0;
    if (take && tensor.by_member[0].group_size > 1) {
      take = group_ready[group_of(tensor.by_member[0])] >= tensor.by_member[0].group_size;
    }
    if (!take) {
      ++it;
      continue;
    }
    KeyNode key_node = order_of_.extract(tensor.key);
    if (spare_keys_.size() < kSpareNodes) spare_keys_.push_back(std::move(key_node));
    OrderNode node = by_order_.extract(it++);
    ready.push_back(std::move(node.mapped()));
    if (spare_tensors_.size() < kSpareNodes) spare_tensors_.push_back(std::move(node));
  }
  return ready;
}

}  // namespace rf
