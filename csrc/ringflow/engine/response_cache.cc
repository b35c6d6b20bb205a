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

void ResponseCache::unlink(uint32_t id) {
  Entry& entry = entries_[id];
  (entry.older == kNone ? oldest_ : entries_[entry.older].newer) = entry.newer;
  (entry.newer == kNone ? newest_ : entries_[entry.newer].older) = entry.older;
  entry.older = entry.newer = kNone;
}

void ResponseCache::append(uint32_t id) {
  Entry& entry = entries_[id];
  entry.older = newest_;
  entry.newer = kNone;
  (newest_ == kNone ? oldest_ : entries_[newest_].newer) = id;
  newest_ = id;
}

void ResponseCache::put(const TensorKey& key, const std::vector<Descriptor>& by_member) {
  if (capacity_ == 0) return;
  auto it = ids_.find(key);
  if (it != ids_.end()) {
    entries_[it->second].by_member.assign(by_member.begin(), by_member.end());
    unlink(it->second);
    append(it->second);
    return;
  }
  uint32_t id;
  // The evicted entry's map node is moved, not freed and allocated again.
  decltype(ids_)::node_type id_node;
  if (!free_.empty()) {
    id = *free_.begin();
    free_.erase(free_.begin());
  } else if (entries_.size() < capacity_) {
    id = static_cast<uint32_t>(entries_.size());
    entries_.emplace_back();
  } else {
    id = oldest_;  // full: evict the least recently used
    unlink(id);
    id_node = ids_.extract(entries_[id].key);
  }
  Entry& entry = entries_[id];
  entry.key = key;
  entry.by_member.assign(by_member.begin(), by_member.end());
  entry.live = true;
  append(id);
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
  entries_[it->second].live = false;
  unlink(it->second);
  free_.insert(it->second);
  ids_.erase(it);
}

}  // namespace rf
