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
    entry.last_used = ++clock_;
    return;
  }
  uint32_t id = static_cast<uint32_t>(entries_.size());
  for (uint32_t i = 0; i < entries_.size(); ++i) {
    if (!entries_[i].live) {
      id = i;
      break;
    }
  }
  if (id == entries_.size()) {
    if (entries_.size() < capacity_) {
      entries_.emplace_back();
    } else {
      id = 0;  // full: evict the least recently used
      for (uint32_t i = 1; i < entries_.size(); ++i) {
        if (entries_[i].last_used < entries_[id].last_used) id = i;
      }
      ids_.erase(entries_[id].key);
    }
  }
  entries_[id] = Entry{key, by_member, ++clock_, true};
  ids_[key] = id;
}

void ResponseCache::erase(const TensorKey& key) {
  auto it = ids_.find(key);
  if (it == ids_.end()) return;
  entries_[it->second].live = false;
  ids_.erase(it);
}

}  // namespace rf
