#include "ringflow/engine/response_cache.h"

#include <cstring>

#include "ringflow/common/check.h"

namespace rf {

TensorKey key_of(const Descriptor& d) { return TensorKey{d.process_set, d.name_hash}; }

std::optional<uint32_t> ResponseCache::lookup(const TensorKey& key, int index,
                                              const Descriptor& own) const {
  auto it = ids_.find(key);
  if (it == ids_.end()) return std::nullopt;
  const Entry& entry = entries_[it->second];
  if (std::memcmp(&entry.by_member[index], &own, sizeof(Descriptor)) != 0) return std::nullopt;
  return it->second;
}

const std::vector<Descriptor>& ResponseCache::entry(uint32_t id) const {
  RF_CHECK(id < entries_.size() && entries_[id].live, kPeerFailure)
      << "a peer announced response-cache entry " << id << ", which this rank does not hold";
  return entries_[id].by_member;
}

void ResponseCache::put(const TensorKey& key, const std::vector<Descriptor>& by_member) {
  if (capacity_ == 0) return;
  // Nodes are moved between the maps, not freed and allocated again: with unnamed calls every
  // put evicts an entry once the cache is full.
  auto it = ids_.find(key);
  if (it != ids_.end()) {
    Entry& entry = entries_[it->second];
    entry.by_member.assign(by_member.begin(), by_member.end());
    auto use = by_use_.extract({entry.last_used, it->second});
    entry.last_used = ++clock_;
    use.value() = {entry.last_used, it->second};
    by_use_.insert(std::move(use));
    return;
  }
  uint32_t id;
  decltype(ids_)::node_type id_node;
  decltype(by_use_)::node_type use_node;
  if (!free_.empty()) {
    id = *free_.begin();
    free_.erase(free_.begin());
  } else if (entries_.size() < capacity_) {
    id = static_cast<uint32_t>(entries_.size());
    entries_.emplace_back();
  } else {
    use_node = by_use_.extract(by_use_.begin());  // full: evict the least recently used
    id = use_node.value().second;
    id_node = ids_.extract(entries_[id].key);
  }
  Entry& entry = entries_[id];
  entry.key = key;
  entry.by_member.assign(by_member.begin(), by_member.end());
  entry.last_used = ++clock_;
  entry.live = true;
  if (use_node) {
    use_node.value() = {clock_, id};
    by_use_.insert(std::move(use_node));
  } else {
    by_use_.insert({clock_, id});
  }
  if (id_node) {
    id_node.key() = key;
    id_node.mapped() = id;
    ids_.insert(std::move(id_node));
  } else {
    ids_[key] = id;
  }
}

void ResponseCache::erase(const TensorKey& key) {
  auto it = ids_.find(key);
  if (it == ids_.end()) return;
  Entry& entry = entries_[it->second];
  entry.live = false;
  by_use_.erase({entry.last_used, it->second});
  free_.insert(it->second);
  ids_.erase(it);
}

}  // namespace rf
