// Process sets with rounds of their own. A set that shares no rank with any other set (the
// job-wide set aside) negotiates and runs among its members only: its rounds, response cache,
// tensor table, waits and tags are its own, so a 32-byte allreduce on set B never waits for set
// A's ranks to finish a 128 MiB bucket. Everything else (the job-wide set, sets that overlap
// another set, send/recv, add/remove_process_set, join, shutdown) keeps the job-wide rounds.
//
// Why this cannot deadlock. Frames between two ranks are read in the order they were sent and
// checked by tag (transport.h), so every pair of ranks must agree on the order of everything
// they do together. A rank belongs to at most one channel; the members of a channel run the same
// sequence of channel rounds (a round starts when one member has news and the others join when
// its frame arrives, as job-wide rounds always did), and they enter a job-wide round only right
// after a channel round in which some member asked for one (wants_job_round: it has job-wide
// work, or a rank outside the channel talked to it). So members interleave channel and job-wide
// work at the same points, and a rank outside the channel exchanges only job-wide rounds and
// their operations with its members. Inside a channel, the order is total, as it is job-wide;
// a job-wide round that some ranks started reaches every channel (Bruck's first step links
// every rank to its neighbour), whose members finish the channel work they agreed on (it needs
// no one outside) and then join it. Overlapping sets are served by the job-wide rounds, in one
// total order, as before: overlapping sets stay deadlock-free by construction.
//
// The set table changes only in job-wide rounds, which every rank runs at the same point of its
// sequence; each rank then looks again (update_channel). A channel whose set now overlaps
// another, or whose member left the job, is given up: its members put the requests still
// pending in it back in their queues, and the next job-wide round announces them afresh.
//
// Deadlock detection (deadlock.h): each round checks its own scope; the channel's members also
// check both scopes together (check_deadlock_across), and their abort tells the others.
#pragma once

#include <cstdint>
#include <vector>

#include "ringflow/engine/process_sets.h"
#include "ringflow/engine/response_cache.h"
#include "ringflow/engine/tensor_table.h"
#include "ringflow/transport/frame.h"

namespace rf {

// Channel tags: kChannelTagBit (transport/frame.h), the set id from bit 40, the channel's
// sequence below; job-wide tags count up from 1 and point-to-point ones carry bit 63, so none
// of them collide.

struct SetChannel {
  SetChannel(int set_id, std::vector<int> set_members, int rank, size_t cache_capacity,
             int world_size);
  int set;
  std::vector<int> members;  // job ranks, sorted
  int my_index;
  TensorTable table;
  ResponseCache cache;
  uint64_t next_tag;
  std::vector<std::vector<TensorKey>> waits;  // by job rank, as Engine::waits_
};

// The set `rank` runs its own rounds in: the only set besides the job-wide one that holds it,
// with at least two ranks and fewer than the job, sharing no rank with any other set. -1: none.
int isolated_set_of(const ProcessSetTable& sets, int rank, int world_size);

}  // namespace rf
