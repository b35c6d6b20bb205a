#include "ringflow/engine/announcement.h"

#include <cstring>

#include "ringflow/common/check.h"

namespace rf {

namespace {

struct AnnouncementHeader {
  uint32_t descriptors;
  uint32_t cache_ids;
};
static_assert(sizeof(AnnouncementHeader) == 8, "part of the wire format");

// More than any real step submits; a larger count can only come from a broken peer.
constexpr uint32_t kMaxEntries = 1u << 20;

size_t payload_bytes(const AnnouncementHeader& h) {
  RF_CHECK(h.descriptors <= kMaxEntries && h.cache_ids <= kMaxEntries, kPeerFailure)
      << "received a malformed negotiation message";
  return h.descriptors * sizeof(Descriptor) + h.cache_ids * sizeof(uint32_t);
}

}  // namespace

RoundResult exchange_announcements(const CollectiveContext& ctx, const Announcement& mine) {
  AnnouncementHeader header{static_cast<uint32_t>(mine.descriptors.size()),
                            static_cast<uint32_t>(mine.cache_ids.size())};
  std::vector<char> payload(payload_bytes(header));
  std::memcpy(payload.data(), mine.descriptors.data(),
              mine.descriptors.size() * sizeof(Descriptor));
  std::memcpy(payload.data() + mine.descriptors.size() * sizeof(Descriptor), mine.cache_ids.data(),
              mine.cache_ids.size() * sizeof(uint32_t));
  GatherBlock block;
  block.header.assign(reinterpret_cast<const char*>(&header),
                      reinterpret_cast<const char*>(&header) + sizeof(header));
  block.payload = payload.data();
  block.payload_bytes = payload.size();
  GatheredBlocks gathered;
  if (ctx.size() == 1) {
    gathered.headers = block.header;
    gathered.payloads.push_back(payload);
  } else {
    bruck_allgather(
        ctx, block,
        [](const char* raw) {
          AnnouncementHeader h;
          std::memcpy(&h, raw, sizeof(h));
          return payload_bytes(h);
        },
        &gathered);
  }
  RoundResult result;
  result.bytes = sizeof(header) + payload.size();
  result.by_rank.resize(ctx.size());
  for (int r = 0; r < ctx.size(); ++r) {
    AnnouncementHeader h;
    std::memcpy(&h, gathered.headers.data() + r * sizeof(h), sizeof(h));
    const char* data = gathered.payloads[r].data();
    Announcement& out = result.by_rank[r];
    out.descriptors.resize(h.descriptors);
    std::memcpy(out.descriptors.data(), data, h.descriptors * sizeof(Descriptor));
    out.cache_ids.resize(h.cache_ids);
    std::memcpy(out.cache_ids.data(), data + h.descriptors * sizeof(Descriptor),
                h.cache_ids * sizeof(uint32_t));
    for (const Descriptor& d : out.descriptors) validate_descriptor(d);
  }
  return result;
}

}  // namespace rf
