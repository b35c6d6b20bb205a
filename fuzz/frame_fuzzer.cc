// Fuzzes the frame parser: the real TcpPair (through rf::testing::probe_frames) reads the
// input as a peer's byte stream into up to three posted receives.
//
// Input: byte 0 = number of receives - 1 (mod 3); 4 bytes per receive: u16 length (little
// endian), u8 tag, u8 flags (bit 0: point-to-point tag, bit 1: variable length); then the
// stream. A rejected frame is an rf::Error inside the result; only a crash, a sanitizer report,
// a write outside a receive buffer or a parser that never finishes (kInternal) is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ringflow/testing/frame_probe.h"
#include "ringflow/transport/frame.h"

namespace {
constexpr size_t kMaxInputBytes = 256 * 1024;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > kMaxInputBytes) return 0;
  size_t count = 1 + data[0] % 3;
  if (size < 1 + 4 * count) return 0;
  std::vector<rf::testing::ProbeRecv> recvs;
  const uint8_t* spec = data + 1;
  for (size_t i = 0; i < count; ++i, spec += 4) {
    rf::testing::ProbeRecv recv;
    recv.len = spec[0] | (size_t{spec[1]} << 8);
    recv.tag = spec[2] | ((spec[3] & 1) ? rf::kPointToPointBit : 0);
    recv.variable_len = (spec[3] & 2) != 0;
    recvs.push_back(recv);
  }
  std::string stream(reinterpret_cast<const char*>(spec), size - (spec - data));
  rf::testing::probe_frames(stream, recvs, /*peer=*/1);  // kInternal escapes: a finding
  return 0;
}
