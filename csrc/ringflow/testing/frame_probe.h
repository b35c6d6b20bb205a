// Test-only: feeds raw bytes, as if sent by rank `peer`, to a real TcpPair over a socketpair
// and runs the given receives on it. The frame fuzzer (fuzz/frame_fuzzer.cc) and the tests
// (tests/test_hostile_clients.py, through _core._probe_frames) both drive the frame parser
// through this one function. Each receive buffer is fenced by guard bytes (a write outside it
// throws kInternal) and comes back, so a test can see that a rejected frame left it untouched.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringflow/common/error.h"

namespace rf::testing {

struct ProbeRecv {
  size_t len = 0;
  uint64_t tag = 0;
  bool variable_len = false;  // a point-to-point receive that accepts another length
};

struct ProbeResult {
  size_t completed = 0;              // receives that finished, in order
  std::vector<std::string> buffers;  // each receive's buffer after the run
  std::vector<size_t> actual_lens;   // what each variable_len receive reported
  bool failed = false;
  ErrorKind kind = ErrorKind::kInternal;
  std::string message;  // the rf::Error the pair threw, if failed
};

ProbeResult probe_frames(const std::string& bytes, const std::vector<ProbeRecv>& recvs, int peer);
// The same through a ShmPair: the bytes go into its incoming shared-memory ring (4 KiB, so
// longer streams wrap), then the pair's connection closes.
ProbeResult probe_shm_frames(const std::string& bytes, const std::vector<ProbeRecv>& recvs,
                             int peer);

}  // namespace rf::testing
