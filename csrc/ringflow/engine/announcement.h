// One negotiation round: every rank tells every other what it submitted since the last round —
// full descriptors for new tensors, or the ids of response-cache entries for tensors whose
// descriptors the ranks already agreed on — in one Bruck allgather (ceil(log2 N) steps).
// Small allreduces also carry their data: when every member's data has arrived, each rank
// reduces locally and the tensor needs no exchange of its own. A rank also says which tensors
// its callers began to wait on (deadlock.h) and, in its last round, that it leaves the job.
#pragma once

#include <cstdint>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/engine/negotiation.h"
#include "ringflow/engine/response_cache.h"

namespace rf {

struct InlineData {
  TensorKey key;
  std::vector<char> bytes;
};

struct Announcement {
  std::vector<Descriptor> descriptors;  // new (uncached) requests, in submission order
  std::vector<uint32_t> cache_ids;      // requests the response cache knows
  std::vector<InlineData> inline_data;  // the data of small allreduces among them
  std::vector<TensorKey> waits;         // pending tensors a caller began to wait on since
  bool leaving = false;                 // this rank shuts down after this round
  bool wants_job_round = false;         // a process set's round: a job-wide round follows
};

struct RoundResult {
  std::vector<Announcement> by_rank;
  size_t bytes = 0;  // what this rank sent, for the negotiation-cost statistics
};

// Exchanges `mine` with every rank of ctx. Malformed announcements raise kPeerFailure.
RoundResult exchange_announcements(const CollectiveContext& ctx, const Announcement& mine);
// The same into `result`, whose vectors keep their capacity: a steady loop of small calls
// allocates nothing here (the engine reuses one RoundResult).
void exchange_announcements(const CollectiveContext& ctx, const Announcement& mine,
                            RoundResult& result);

}  // namespace rf
