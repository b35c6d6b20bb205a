// Every message between two ranks is one frame: this header, then `length` payload bytes.
// The tag says which operation the frame belongs to (the collective's sequence number, or a
// point-to-point counter with kPointToPointBit set), so a frame can never be applied to the
// wrong operation. The receiver validates the whole header before touching any buffer.
#pragma once

#include <cstdint>

namespace rf {

constexpr uint32_t kFrameMagic = 0x52464652;  // "RFFR"
constexpr uint64_t kPointToPointBit = uint64_t{1} << 63;
// A process set's own rounds and operations (engine/set_channels.h): the set id from bit 40,
// the set's sequence number below.
constexpr uint64_t kChannelTagBit = uint64_t{1} << 62;
constexpr uint64_t kMaxAbortMessageBytes = 64 * 1024;

enum class FrameKind : uint32_t {
  kData = 1,
  kAbort = 2,  // payload: why the sender gave up; the receiver fails with that message
};

struct FrameHeader {
  uint32_t magic;
  uint32_t kind;
  uint64_t tag;
  uint64_t length;
};
static_assert(sizeof(FrameHeader) == 24, "frame header is part of the wire format");

}  // namespace rf
