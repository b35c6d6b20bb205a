// Bruck allgather of self-describing blocks: every rank contributes a fixed-size header and a
// payload whose size its header determines. In round k (distance d = 2^k) a rank sends the
// blocks it holds so far to rank r - d and receives as many from rank r + d, so after
// ceil(log2 N) rounds — the latency minimum, for any N — everyone holds every block.
// Blocks are kept rotated (position i holds rank r + i) so each round moves one contiguous run.
//
// Each round is two frames: the headers, then the payloads whose total the receiver computes
// from those headers — so ranks that disagree about sizes still finish the exchange and can
// all report the disagreement, instead of failing on a frame of unexpected length.
#include <algorithm>
#include <cstring>

#include "ringflow/collectives/collective.h"

namespace rf {

void bruck_allgather(const CollectiveContext& ctx, const GatherBlock& mine,
                     const PayloadSize& payload_size, GatheredBlocks* all) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  const size_t header_bytes = mine.header.size();
  std::vector<char> headers(size * header_bytes);
  std::vector<std::vector<char>> payloads(size);
  if (header_bytes) std::memcpy(headers.data(), mine.header.data(), header_bytes);
  payloads[0].assign(mine.payload, mine.payload + mine.payload_bytes);

  for (int distance = 1; distance < size; distance <<= 1) {
    const int count = std::min(distance, size - distance);
    const int to = (rank - distance + size) % size;
    const int from = (rank + distance) % size;
    std::vector<char> outgoing;
    for (int i = 0; i < count; ++i) {
      outgoing.insert(outgoing.end(), payloads[i].begin(), payloads[i].end());
    }
    ctx.transport.post_send(to, headers.data(), count * header_bytes, ctx.tag);
    ctx.transport.post_send(to, outgoing.data(), outgoing.size(), ctx.tag);
    char* arriving = headers.data() + distance * header_bytes;
    uint64_t ticket = ctx.transport.post_recv(from, arriving, count * header_bytes, ctx.tag);
    ctx.transport.wait_recv(from, ticket, ctx.deadline);
    std::vector<size_t> sizes(count);
    size_t total = 0;
    for (int i = 0; i < count; ++i) total += sizes[i] = payload_size(arriving + i * header_bytes);
    std::vector<char> incoming(total);
    ctx.transport.post_recv(from, incoming.data(), total, ctx.tag);
    ctx.transport.wait_all(ctx.deadline);
    size_t offset = 0;
    for (int i = 0; i < count; ++i) {
      payloads[distance + i].assign(incoming.begin() + offset,
                                    incoming.begin() + offset + sizes[i]);
      offset += sizes[i];
    }
  }
  // Un-rotate: position i holds rank (rank + i) mod size.
  all->headers.resize(size * header_bytes);
  all->payloads.resize(size);
  for (int i = 0; i < size; ++i) {
    const int owner = (rank + i) % size;
    if (header_bytes) {
      std::memcpy(all->headers.data() + owner * header_bytes, headers.data() + i * header_bytes,
                  header_bytes);
    }
    all->payloads[owner] = std::move(payloads[i]);
  }
}

}  // namespace rf
