// Horovod's response cache: once the ranks have agreed on a tensor's descriptors, a later
// submission of the same tensor with the same descriptor is announced by a 4-byte id instead
// of its 192-byte descriptor, so a steady training step renegotiates almost nothing. Every rank
// holds an identical cache: entries are added, used and evicted only while processing rounds,
// which every rank processes alike.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ringflow/engine/negotiation.h"

namespace rf {

// A tensor is identified by its process set and the hash of its name.
struct TensorKey {
  int32_t process_set;
  uint64_t name_hash;
  bool operator==(const TensorKey& o) const {
    return process_set == o.process_set && name_hash == o.name_hash;
  }
};
struct TensorKeyHash {
  size_t operator()(const TensorKey& k) const {
    return k.name_hash ^ (static_cast<uint64_t>(k.process_set) * 0x9e3779b97f4a7c15ull);
  }
};
TensorKey key_of(const Descriptor& d);

class ResponseCache {
 public:
  explicit ResponseCache(size_t capacity) : capacity_(capacity) {}

  // The id under which `own` (this rank's descriptor, member index `index`) can be announced.
  std::optional<uint32_t> lookup(const TensorKey& key, int index, const Descriptor& own) const;
  // The agreed descriptors (by member index) behind `id`. Throws kPeerFailure for an unknown id.
  const std::vector<Descriptor>& entry(uint32_t id) const;
  // Records an agreed tensor (descriptors by member index); evicts the least recently used.
  void put(const TensorKey& key, const std::vector<Descriptor>& by_member);
  // A rank sent a full descriptor for a cached tensor: its request changed. Forget the entry.
  void erase(const TensorKey& key);

 private:
  static constexpr uint32_t kNone = ~0u;
  struct Entry {
    TensorKey key;
    std::vector<Descriptor> by_member;
    uint32_t older = kNone;  // the recency list, least recently used first (live entries only)
    uint32_t newer = kNone;
    bool live = false;
  };
  void unlink(uint32_t id);
  void append(uint32_t id);  // as the most recently used
  size_t capacity_;
  std::vector<Entry> entries_;  // indexed by id; ids of erased entries are reused
  std::unordered_map<TensorKey, uint32_t, TensorKeyHash> ids_;
  // Dead ids (lowest reused first) and a recency list threaded through the entries: a put costs
  // O(1) and no allocation (every unnamed call adds an entry, so a full cache is the norm).
  std::set<uint32_t> free_;
  uint32_t oldest_ = kNone;
  uint32_t newest_ = kNone;
};

}  // namespace rf
