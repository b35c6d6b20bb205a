// Which generation of the job an init() joins, agreed through the store. Every init() of a
// job (the first, and each one after a shutdown()) is a new generation: its rendezvous keys,
// heartbeats and handshakes carry the number, so nothing of an earlier one is ever mistaken for
// the current one. The number is the job's, not a count kept by each process: ranks may have
// initialised different numbers of times, some ranks may start over while others stay out, and
// a replacement process (a rank that died, started again) joins the job's current generation.
//
// The ranks of one world size meet in rounds: round R of size N is the N ranks that arrive
// after round R-1 filled. Each arrival claims its rank's place in the open round (a rank whose
// earlier attempt in that round failed takes its place again), the first one draws the
// generation number from a job-wide counter, and the N-th closes the round. No rank waits for
// the others here (the rendezvous does that), so ranks publish their addresses as they arrive.
#pragma once

#include <cstdint>

#include "ringflow/common/deadline.h"
#include "ringflow/store/store.h"

namespace rf {

// The generation this rank joins (size > 1). Store keys: rf/generations (the job's counter),
// rf/round/<size>/open, rf/round/<size>/<R>/{arrived, rank/<r>, generation}.
uint32_t agree_generation(Store& store, int rank, int size, const Deadline& deadline);

}  // namespace rf
