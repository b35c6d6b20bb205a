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
  auto it = ids_.find(key);
  if (it != ids_.end()) {
    Entry& entry = entries_[it->second];
    entry.by_member = by_member;
    by_use_.erase({entry.last_used, it->second});
    entry.last_used = ++clock_;
    by_use_.insert({entry.last_used, it->second});
    return;
  }
  uint32_t id;
  if (!free_.empty()) {
    id = *free_.begin();
    free_.erase(free_.begin());
  } else if (entries_.size() < capacity_) {
    id = static_cast<uint32_t>(entries_.size());
    entries_.emplace_back();
  } else {
    id = by_use_.begin()->second;  // full: evict the least recently used
    by_use_.erase(by_use_.begin());
    ids_.erase(entries_[id].key);
  }
  entries_[id] = Entry{key, by_member, ++clock_, true};
  by_use_.insert({clock_, id});
  ids_[key] = id;
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
