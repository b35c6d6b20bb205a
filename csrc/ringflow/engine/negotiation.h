// What one rank asks for, as the other ranks see it: a fixed-size descriptor (operation, tensor
// name, dtype, shape, op, root, scale factors, process set, or "my input was invalid"). The
// engine gathers every rank's descriptors of a tensor by name and runs the same comparison on
// each rank, so a disagreement raises the same named error everywhere and no rank is left
// waiting for data that will never come.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringflow/common/dtype.h"

namespace rf {

enum class OpKind : uint8_t {
  kAllreduce = 1,
  kBroadcast = 2,
  kAllgather = 3,
  kReducescatter = 4,
  kAlltoall = 5,
  kBarrier = 6,
  kPointToPoint = 7,   // send/recv: root = source, peer = destination
  kAddProcessSet = 8,  // registering a process set is itself negotiated, by every rank
  kRemoveProcessSet = 9,
  kJoin = 10,  // this rank has no more data: it stands in with zeros until every rank joined
};
const char* op_kind_name(OpKind kind);

constexpr int kMaxDims = 8;
constexpr size_t kDescriptorNameBytes = 71;
constexpr int32_t kPointToPointSet = -1;  // process_set of send/recv: just the two ranks

// The negotiable part of a request. Plain data, sent as is between ranks of one job.
struct Request {
  OpKind kind = OpKind::kBarrier;
  std::string name;
  DType dtype = DType::kUInt8;
  ReduceOp op = ReduceOp::kSum;
  int32_t root = 0;
  int32_t peer = 0;
  int32_t process_set = 0;
  std::vector<int64_t> shape;
  double prescale = 1.0;
  double postscale = 1.0;
  uint64_t group_hash = 0;  // grouped_*: every member of one group carries the group's hash
  uint32_t group_size = 0;
  bool on_device = false;  // a CUDA tensor (staged or reduced on the device), not host memory
  // Non-empty when this rank's input is unusable; the other ranks are told so.
  std::string invalid_reason;
};

#pragma pack(push, 1)
struct Descriptor {
  uint8_t kind;
  uint8_t dtype;
  uint8_t op;
  uint8_t invalid;  // 1 when the rank's input was rejected locally
  int32_t root;
  int32_t peer;
  int32_t process_set;
  int32_t ndim;
  uint32_t group_size;
  int64_t dims[kMaxDims];
  double prescale;
  double postscale;
  uint64_t name_hash;
  uint64_t group_hash;
  uint8_t on_device;                // 1: a CUDA tensor; every member must agree
  char name[kDescriptorNameBytes];  // for messages; matching uses name_hash of the full name
};
#pragma pack(pop)
static_assert(sizeof(Descriptor) == 192, "descriptor is part of the wire format");

uint64_t name_hash(const std::string& name);
Descriptor describe(const Request& request);
std::string descriptor_name(const Descriptor& d);
size_t descriptor_elements(const Descriptor& d);
// Throws kPeerFailure for a descriptor no ringflow rank would send.
void validate_descriptor(const Descriptor& d);

// Whether the descriptors of one tensor agree (what every rank, member or not, can tell).
bool descriptors_agree(const std::vector<Descriptor>& all);

// Checks that the descriptors of one tensor agree; every member reaches the same verdict.
// all[i] came from global rank ranks[i]; `rank` is this rank. Throws kInvalidArgument on the
// rank whose input was invalid and kMismatch, naming the field and every rank's value, on the
// others.
void check_agreement(const std::vector<Descriptor>& all, const std::vector<int>& ranks, int rank,
                     const Request& request);

}  // namespace rf
