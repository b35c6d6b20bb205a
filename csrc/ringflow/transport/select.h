// The one place that decides how each pair of ranks talks: shared memory when both ranks can
// map each other's segment, TCP otherwise (RINGFLOW_TRANSPORT=auto|tcp|shm).
#pragma once

#include <memory>
#include <vector>

#include "ringflow/common/deadline.h"
#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/tcp/spin_policy.h"
#include "ringflow/transport/transport.h"

namespace rf {

// `sockets[p]`: the connected, authenticated connection to rank p. Same host is decided by
// probe, over those connections, and agreed by both sides of every pair: boot id and /dev/shm
// (device, inode) must match, then each rank maps the other's segment and reads back the nonce
// written there. Ranks in different network namespaces of one machine pass the probe and share
// memory under auto; `tcp` skips it. Under `shm` a pair that cannot share memory is an error;
// under auto it falls back to TCP with a warning when /dev/shm is full.
// stripes[p]: further connections to rank p, used where the pair talks TCP.
std::unique_ptr<Transport> make_transport(int rank, std::vector<UniqueFd> sockets, SpinOptions spin,
                                          const Deadline& deadline,
                                          std::vector<std::vector<UniqueFd>> stripes = {});

}  // namespace rf
