#include "ringflow/engine/announcement.h"

#include <cstring>

#include "ringflow/common/check.h"

namespace rf {

namespace {

struct AnnouncementHeader {
  uint32_t descriptors;
  uint32_t cache_ids;
  uint32_t inline_count;
  uint32_t inline_bytes;  // the data of all inline entries together
  uint32_t waits;
  uint32_t flags;  // kLeaving, kWantsJobRound
};
static_assert(sizeof(AnnouncementHeader) == 24, "part of the wire format");
constexpr uint32_t kLeaving = 1;
constexpr uint32_t kWantsJobRound = 2;

#pragma pack(push, 1)
struct InlineHeader {
  int32_t process_set;
  uint32_t bytes;
  uint64_t name_hash;
};
struct WaitEntry {
  int32_t process_set;
  uint64_t name_hash;
};
#pragma pack(pop)
static_assert(sizeof(InlineHeader) == 16, "part of the wire format");
static_assert(sizeof(WaitEntry) == 12, "part of the wire format");

// More than any real step submits; a larger count can only come from a broken peer.
constexpr uint32_t kMaxEntries = 1u << 20;

size_t payload_bytes(const AnnouncementHeader& h) {
  RF_CHECK(h.descriptors <= kMaxEntries && h.cache_ids <= kMaxEntries &&
               h.inline_count <= kMaxEntries && h.inline_bytes <= (1u << 30) &&
               h.waits <= kMaxEntries && (h.flags & ~(kLeaving | kWantsJobRound)) == 0,
           kPeerFailure)
      << "received a malformed negotiation message";
  return h.descriptors * sizeof(Descriptor) + h.cache_ids * sizeof(uint32_t) +
         h.inline_count * sizeof(InlineHeader) + h.inline_bytes + h.waits * sizeof(WaitEntry);
}

}  // namespace

RoundResult exchange_announcements(const CollectiveContext& ctx, const Announcement& mine) {
  RoundResult result;
  exchange_announcements(ctx, mine, result);
  return result;
}

void exchange_announcements(const CollectiveContext& ctx, const Announcement& mine,
                            RoundResult& result) {
  uint32_t inline_bytes = 0;
  for (const InlineData& data : mine.inline_data) {
    inline_bytes += static_cast<uint32_t>(data.bytes.size());
  }
  AnnouncementHeader header{
      static_cast<uint32_t>(mine.descriptors.size()),
      static_cast<uint32_t>(mine.cache_ids.size()),
      static_cast<uint32_t>(mine.inline_data.size()),
      inline_bytes,
      static_cast<uint32_t>(mine.waits.size()),
      (mine.leaving ? kLeaving : 0u) | (mine.wants_job_round ? kWantsJobRound : 0u)};
  // Scratch kept from round to round (a round never runs inside another on one thread).
  thread_local std::vector<char> payload;
  thread_local GatherBlock block;
  thread_local GatheredBlocks gathered;
  thread_local std::vector<InlineHeader> inline_headers;
  payload.resize(payload_bytes(header));
  char* cursor = payload.data();
  auto put = [&cursor](const void* data, size_t bytes) {
    if (bytes) std::memcpy(cursor, data, bytes);
    cursor += bytes;
  };
  put(mine.descriptors.data(), mine.descriptors.size() * sizeof(Descriptor));
  put(mine.cache_ids.data(), mine.cache_ids.size() * sizeof(uint32_t));
  for (const InlineData& data : mine.inline_data) {
    InlineHeader h{data.key.process_set, static_cast<uint32_t>(data.bytes.size()),
                   data.key.name_hash};
    put(&h, sizeof(h));
  }
  for (const InlineData& data : mine.inline_data) put(data.bytes.data(), data.bytes.size());
  for (const TensorKey& key : mine.waits) {
    WaitEntry entry{key.process_set, key.name_hash};
    put(&entry, sizeof(entry));
  }
  block.header.assign(reinterpret_cast<const char*>(&header),
                      reinterpret_cast<const char*>(&header) + sizeof(header));
  block.payload = payload.data();
  block.payload_bytes = payload.size();
  const PayloadSize size_of = [](const char* raw) {
    AnnouncementHeader h;
    std::memcpy(&h, raw, sizeof(h));
    return payload_bytes(h);
  };
  if (ctx.size() == 1) {
    gathered.headers = block.header;
    gathered.payloads.resize(1);
    gathered.payloads[0].assign(payload.begin(), payload.end());
  } else if (!ctx.transport.oneshot_allgather(block.header, block.payload, block.payload_bytes,
                                              size_of, &gathered.headers, &gathered.payloads,
                                              ctx.tag, ctx.deadline)) {
    bruck_allgather(ctx, block, size_of, &gathered);
  }
  result.bytes = sizeof(header) + payload.size();
  result.by_rank.resize(ctx.size());
  for (int r = 0; r < ctx.size(); ++r) {
    AnnouncementHeader h;
    std::memcpy(&h, gathered.headers.data() + r * sizeof(h), sizeof(h));
    const char* data = gathered.payloads[r].data();
    auto take = [&data](void* target, size_t bytes) {
      if (bytes) std::memcpy(target, data, bytes);
      data += bytes;
    };
    Announcement& out = result.by_rank[r];
    out.descriptors.resize(h.descriptors);
    take(out.descriptors.data(), h.descriptors * sizeof(Descriptor));
    out.cache_ids.resize(h.cache_ids);
    take(out.cache_ids.data(), h.cache_ids * sizeof(uint32_t));
    inline_headers.resize(h.inline_count);
    take(inline_headers.data(), h.inline_count * sizeof(InlineHeader));
    size_t announced_bytes = 0;
    for (const InlineHeader& ih : inline_headers) announced_bytes += ih.bytes;
    RF_CHECK(announced_bytes == h.inline_bytes, kPeerFailure)
        << "received a malformed negotiation message (inline data sizes)";
    out.inline_data.resize(h.inline_count);
    for (uint32_t i = 0; i < h.inline_count; ++i) {
      out.inline_data[i].key =
          TensorKey{inline_headers[i].process_set, inline_headers[i].name_hash};
      out.inline_data[i].bytes.resize(inline_headers[i].bytes);
      take(out.inline_data[i].bytes.data(), inline_headers[i].bytes);
    }
    out.waits.resize(h.waits);
    for (uint32_t i = 0; i < h.waits; ++i) {
      WaitEntry entry;
      take(&entry, sizeof(entry));
      out.waits[i] = TensorKey{entry.process_set, entry.name_hash};
    }
    out.leaving = (h.flags & kLeaving) != 0;
    out.wants_job_round = (h.flags & kWantsJobRound) != 0;
    for (const Descriptor& d : out.descriptors) validate_descriptor(d);
  }
}

}  // namespace rf
