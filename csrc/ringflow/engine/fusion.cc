#include "ringflow/engine/fusion.h"

#include <algorithm>
#include <cstring>

namespace rf {

namespace {

bool fusible(OpKind kind) {
  return kind == OpKind::kAllreduce || kind == OpKind::kAllgather || kind == OpKind::kReducescatter;
}

// Tensors that may share a bucket: same set, operation, dtype, op, scaling and group.
bool same_bucket(const Descriptor& a, const Descriptor& b) {
  return a.process_set == b.process_set && a.kind == b.kind && a.dtype == b.dtype && a.op == b.op &&
         a.prescale == b.prescale && a.postscale == b.postscale && a.group_hash == b.group_hash;
}

}  // namespace

std::vector<std::vector<size_t>> plan_buckets(const std::vector<PlanItem>& items,
                                              size_t threshold) {
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_bytes;
  std::vector<size_t> open;  // buckets that may still grow
  for (size_t i = 0; i < items.size(); ++i) {
    const Descriptor& d = *items[i].descriptor;
    const bool grouped = d.group_size > 1;
    const bool fuse = fusible(static_cast<OpKind>(d.kind)) && threshold > 0 &&
                      (grouped || items[i].bytes < kFusionMaxTensorBytes);
    bool placed = false;
    for (size_t b : fuse ? open : std::vector<size_t>{}) {
      if (same_bucket(*items[buckets[b][0]].descriptor, d) &&
          (grouped || bucket_bytes[b] + items[i].bytes <= threshold)) {
        buckets[b].push_back(i);
        bucket_bytes[b] += items[i].bytes;
        placed = true;
        break;
      }
    }
    if (placed) continue;
    if (fuse) open.push_back(buckets.size());
    buckets.push_back({i});
    bucket_bytes.push_back(items[i].bytes);
  }
  return buckets;
}

FusedLayout::FusedLayout(std::vector<std::vector<size_t>> bytes) : bytes_(std::move(bytes)) {
  const size_t slots = bytes_.empty() ? 0 : bytes_[0].size();
  slot_bytes_.assign(slots, 0);
  fused_offset_.assign(bytes_.size(), std::vector<size_t>(slots));
  tensor_offset_.assign(bytes_.size(), std::vector<size_t>(slots));
  for (size_t t = 0; t < bytes_.size(); ++t) {
    size_t within = 0;
    for (size_t c = 0; c < slots; ++c) {
      tensor_offset_[t][c] = within;
      within += bytes_[t][c];
    }
  }
  for (size_t c = 0; c < slots; ++c) {
    for (size_t t = 0; t < bytes_.size(); ++t) {
      fused_offset_[t][c] = total_;
      total_ += bytes_[t][c];
      slot_bytes_[c] += bytes_[t][c];
    }
  }
}

void pack_all(const FusedLayout& layout, const std::vector<const void*>& sources, char* fused) {
  for (size_t t = 0; t < layout.tensors(); ++t) {
    const char* source = static_cast<const char*>(sources[t]);
    for (size_t c = 0; c < layout.slots(); ++c) {
      const size_t n = layout.block_bytes(t, c);
      if (n) std::memcpy(fused + layout.fused_offset(t, c), source + layout.tensor_offset(t, c), n);
    }
  }
}

std::function<void(size_t, size_t, char*)> fused_gather(const FusedLayout& layout,
                                                        const std::vector<const void*>& sources) {
  return [&layout, &sources](size_t offset, size_t bytes, char* dst) {
    const size_t end = offset + bytes;
    for (size_t c = 0; c < layout.slots(); ++c) {
      for (size_t t = 0; t < layout.tensors(); ++t) {
        const size_t first = layout.fused_offset(t, c);
        const size_t last = first + layout.block_bytes(t, c);
        if (last <= offset || first >= end) continue;
        const size_t from = std::max(first, offset);
        const char* source = static_cast<const char*>(sources[t]) + layout.tensor_offset(t, c);
        std::memcpy(dst + (from - offset), source + (from - first), std::min(last, end) - from);
      }
    }
  };
}

void pack_slot(const FusedLayout& layout, size_t c, const std::vector<const void*>& sources,
               char* fused) {
  for (size_t t = 0; t < layout.tensors(); ++t) {
    const size_t n = layout.block_bytes(t, c);
    if (n) std::memcpy(fused + layout.fused_offset(t, c), sources[t], n);
  }
}

void unpack_all(const FusedLayout& layout, const char* fused, const std::vector<void*>& targets) {
  for (size_t t = 0; t < layout.tensors(); ++t) {
    char* target = static_cast<char*>(targets[t]);
    for (size_t c = 0; c < layout.slots(); ++c) {
      const size_t n = layout.block_bytes(t, c);
      if (n) std::memcpy(target + layout.tensor_offset(t, c), fused + layout.fused_offset(t, c), n);
    }
  }
}

void unpack_slot(const FusedLayout& layout, size_t c, const char* slot,
                 const std::vector<void*>& targets) {
  const size_t base = layout.tensors() ? layout.fused_offset(0, c) : 0;
  for (size_t t = 0; t < layout.tensors(); ++t) {
    const size_t n = layout.block_bytes(t, c);
    if (n) std::memcpy(targets[t], slot + layout.fused_offset(t, c) - base, n);
  }
}

}  // namespace rf
