// Before a collective moves data, the ranks agree on what it is: every rank contributes a
// fixed-size descriptor of its request (operation, tensor name, dtype, shape, op, root, scale
// factors, or "my input was invalid"), all descriptors are gathered everywhere, and every rank
// runs the same comparison — so a disagreement raises the same named error on every rank and
// no rank is left waiting. (The background engine of a later issue negotiates by name and
// caches; this is the synchronous first step of that.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/common/dtype.h"

namespace rf {

enum class OpKind : uint8_t {
  kAllreduce = 1,
  kBroadcast = 2,
  kAllgather = 3,
  kReducescatter = 4,
  kAlltoall = 5,
  kBarrier = 6,
};
const char* op_kind_name(OpKind kind);

constexpr int kMaxDims = 8;
constexpr size_t kDescriptorNameBytes = 40;

// What one rank asks for. Plain data, sent as is between ranks of one job.
struct Request {
  OpKind kind = OpKind::kBarrier;
  std::string name;
  DType dtype = DType::kUInt8;
  ReduceOp op = ReduceOp::kSum;
  int32_t root = 0;
  std::vector<int64_t> shape;
  double prescale = 1.0;
  double postscale = 1.0;
  // Non-empty when this rank's input is unusable; the other ranks are told so.
  std::string invalid_reason;
  // The data travels with the descriptor (small allreduce: negotiation and data in one exchange).
  const void* inline_payload = nullptr;
};

#pragma pack(push, 1)
struct Descriptor {
  uint8_t kind;
  uint8_t dtype;
  uint8_t op;
  uint8_t invalid;  // 1 when the rank's input was rejected locally
  int32_t root;
  int32_t ndim;
  uint8_t inline_payload;  // 1 when the tensor's bytes follow the descriptor
  uint8_t reserved[3];
  int64_t dims[kMaxDims];
  double prescale;
  double postscale;
  uint64_t name_hash;
  char name[kDescriptorNameBytes];
};
#pragma pack(pop)
static_assert(sizeof(Descriptor) == 144, "descriptor is part of the wire format");

Descriptor describe(const Request& request);

// Bytes of tensor data a descriptor announces (its inline payload, or 0). Throws kPeerFailure
// for a descriptor no ringflow rank would send.
size_t inline_payload_bytes(const Descriptor& d);

struct Negotiated {
  std::vector<Descriptor> descriptors;      // by rank
  std::vector<std::vector<char>> payloads;  // by rank; empty unless sent inline
};

// Gathers every rank's descriptor and inline payload in ceil(log2 N) rounds (moves bytes;
// transport errors propagate).
Negotiated exchange_descriptors(const CollectiveContext& ctx, const Request& request);

// Checks that the gathered descriptors agree; every rank reaches the same verdict. Throws
// kInvalidArgument on the rank whose input was invalid and kMismatch, naming the field and
// every rank's value, on the others.
void check_agreement(const std::vector<Descriptor>& all, int rank, const Request& request);

}  // namespace rf
