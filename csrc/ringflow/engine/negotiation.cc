#include "ringflow/engine/negotiation.h"

#include <cstring>
#include <functional>
#include <sstream>

#include "ringflow/common/check.h"

namespace rf {

const char* op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::kAllreduce:
      return "allreduce";
    case OpKind::kBroadcast:
      return "broadcast";
    case OpKind::kAllgather:
      return "allgather";
    case OpKind::kReducescatter:
      return "reducescatter";
    case OpKind::kAlltoall:
      return "alltoall";
    case OpKind::kBarrier:
      return "barrier";
    case OpKind::kPointToPoint:
      return "send/recv";
    case OpKind::kAddProcessSet:
      return "add_process_set";
    case OpKind::kRemoveProcessSet:
      return "remove_process_set";
    case OpKind::kJoin:
      return "join";
  }
  return "unknown";
}

namespace {

std::string shape_text(const Descriptor& d, int first_dim) {
  std::ostringstream text;
  text << "(";
  for (int i = first_dim; i < d.ndim; ++i) text << (i > first_dim ? ", " : "") << d.dims[i];
  if (d.ndim - first_dim == 1) text << ",";
  text << ")";
  return text.str();
}

// If value(d) differs between ranks, throws a kMismatch listing each rank's value.
void require_same(const std::vector<Descriptor>& all, const std::vector<int>& ranks, int rank,
                  const Request& request, const char* field,
                  const std::function<std::string(const Descriptor&)>& value) {
  const std::string first = value(all[0]);
  bool same = true;
  for (const auto& d : all) same = same && value(d) == first;
  if (same) return;
  std::ostringstream message;
  message << "rank " << rank << ": " << op_kind_name(request.kind) << " of tensor '" << request.name
          << "': " << field << " differs between ranks:";
  for (size_t i = 0; i < all.size(); ++i) {
    message << (i ? "," : "") << " rank " << ranks[i] << " " << value(all[i]);
  }
  RF_THROW(kMismatch) << message.str();
}

// The descriptor with the fields that may differ between ranks cleared.
Descriptor comparable(const Descriptor& d) {
  Descriptor copy = d;
  if (copy.kind == static_cast<uint8_t>(OpKind::kAllgather) ||
      copy.kind == static_cast<uint8_t>(OpKind::kAlltoall)) {
    copy.dims[0] = 0;
  }
  return copy;
}

bool all_agree(const std::vector<Descriptor>& all) {
  const Descriptor first = comparable(all[0]);
  for (const Descriptor& d : all) {
    if (d.invalid) return false;
    Descriptor other = comparable(d);
    if (std::memcmp(&first, &other, sizeof(Descriptor)) != 0) return false;
  }
  return true;
}

}  // namespace

bool descriptors_agree(const std::vector<Descriptor>& all) { return all_agree(all); }

uint64_t name_hash(const std::string& name) {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

Descriptor describe(const Request& request) {
  Descriptor d;
  std::memset(&d, 0, sizeof(d));
  d.kind = static_cast<uint8_t>(request.kind);
  d.dtype = static_cast<uint8_t>(request.dtype);
  d.op = static_cast<uint8_t>(request.op);
  d.invalid = request.invalid_reason.empty() ? 0 : 1;
  d.root = request.root;
  d.peer = request.peer;
  d.process_set = request.process_set;
  RF_CHECK(request.shape.size() <= kMaxDims, kInvalidArgument)
      << op_kind_name(request.kind) << " of tensor '" << request.name
      << "': " << request.shape.size() << " dimensions, at most " << kMaxDims << " are supported";
  d.ndim = static_cast<int32_t>(request.shape.size());
  for (size_t i = 0; i < request.shape.size(); ++i) d.dims[i] = request.shape[i];
  d.group_size = request.group_size;
  d.prescale = request.prescale;
  d.postscale = request.postscale;
  d.name_hash = name_hash(request.name);
  d.group_hash = request.group_hash;
  d.on_device = request.on_device ? 1 : 0;
  std::strncpy(d.name, request.name.c_str(), kDescriptorNameBytes - 1);
  return d;
}

std::string descriptor_name(const Descriptor& d) {
  return std::string(d.name, strnlen(d.name, kDescriptorNameBytes));
}

size_t descriptor_elements(const Descriptor& d) {
  size_t count = 1;
  for (int i = 0; i < d.ndim; ++i) count *= static_cast<size_t>(d.dims[i]);
  return count;
}

void validate_descriptor(const Descriptor& d) {
  // Sizes a peer announces become allocations here: refuse what no real tensor could be.
  constexpr size_t kLimit = size_t{1} << 40;
  RF_CHECK(d.kind >= 1 && d.kind <= static_cast<uint8_t>(OpKind::kJoin) &&
               dtype_is_valid(d.dtype) && d.ndim >= 0 && d.ndim <= kMaxDims,
           kPeerFailure)
      << "received a malformed operation descriptor";
  size_t bytes = dtype_size(static_cast<DType>(d.dtype));
  for (int i = 0; i < d.ndim; ++i) {
    RF_CHECK(d.dims[i] >= 0 && static_cast<size_t>(d.dims[i]) <= kLimit, kPeerFailure)
        << "received a malformed operation descriptor";
    bytes *= static_cast<size_t>(d.dims[i]);
    RF_CHECK(bytes <= kLimit, kPeerFailure) << "received a descriptor of an impossible size";
  }
}

void check_agreement(const std::vector<Descriptor>& all, const std::vector<int>& ranks, int rank,
                     const Request& request) {
  // The common case, checked without building a single message.
  if (request.invalid_reason.empty() && all_agree(all)) return;
  const int size = static_cast<int>(all.size());
  std::string context = "rank " + std::to_string(rank) + ": " + op_kind_name(request.kind) +
                        " of tensor '" + request.name + "'";
  // Invalid input first: the offending rank explains itself, the others name it.
  RF_CHECK(request.invalid_reason.empty(), kInvalidArgument)
      << context << ": " << request.invalid_reason;
  for (int i = 0; i < size; ++i) {
    RF_CHECK(!all[i].invalid, kMismatch)
        << context << ": rank " << ranks[i] << " passed invalid input (see rank " << ranks[i]
        << "'s error); no data was exchanged";
  }
  // The same operation and name on every rank, or they are calling collectives out of order.
  require_same(all, ranks, rank, request, "operation", [](const Descriptor& d) {
    return std::string(op_kind_name(static_cast<OpKind>(d.kind))) + " '" + descriptor_name(d) + "'";
  });
  require_same(all, ranks, rank, request, "tensor name",
               [](const Descriptor& d) { return std::to_string(d.name_hash); });
  require_same(all, ranks, rank, request, "dtype", [](const Descriptor& d) {
    return std::string(dtype_name(static_cast<DType>(d.dtype)));
  });
  require_same(all, ranks, rank, request, "memory (host or CUDA device)",
               [](const Descriptor& d) { return std::string(d.on_device ? "CUDA" : "host"); });
  const OpKind kind = request.kind;
  if (kind == OpKind::kAllreduce || kind == OpKind::kReducescatter) {
    require_same(all, ranks, rank, request, "reduce op", [](const Descriptor& d) {
      return std::string(reduce_op_name(static_cast<ReduceOp>(d.op)));
    });
  }
  if (kind == OpKind::kAllreduce || kind == OpKind::kReducescatter) {
    auto number = [](double value) {
      std::ostringstream text;
      text << value;
      return text.str();
    };
    require_same(all, ranks, rank, request, "prescale_factor",
                 [&](const Descriptor& d) { return number(d.prescale); });
    require_same(all, ranks, rank, request, "postscale_factor",
                 [&](const Descriptor& d) { return number(d.postscale); });
  }
  if (kind == OpKind::kBroadcast) {
    require_same(all, ranks, rank, request, "root rank",
                 [](const Descriptor& d) { return std::to_string(d.root); });
  }
  if (kind == OpKind::kAddProcessSet) {
    require_same(all, ranks, rank, request, "ranks passed to add_process_set",
                 [](const Descriptor& d) {
                   return std::to_string(d.ndim ? d.dims[0] : 0) + " ranks (checksum " +
                          std::to_string(d.root) + ")";
                 });
  }
  // allgather and alltoall may differ in the first dimension; everything else must match whole.
  const bool first_dim_free = kind == OpKind::kAllgather || kind == OpKind::kAlltoall;
  if (kind != OpKind::kBarrier && kind != OpKind::kAddProcessSet &&
      kind != OpKind::kRemoveProcessSet && kind != OpKind::kJoin) {
    const char* field = first_dim_free                  ? "shape after the first dimension"
                        : kind == OpKind::kPointToPoint ? "message size in bytes (send vs recv)"
                                                        : "shape";
    require_same(all, ranks, rank, request, field, [&](const Descriptor& d) {
      if (first_dim_free && d.ndim == 0) return std::string("() (a scalar)");
      return shape_text(d, first_dim_free ? 1 : 0);
    });
  }
  // Whatever else differs: the grouping (grouped_* on some ranks only) or the process set.
  require_same(all, ranks, rank, request, "group (grouped_* call) or process set",
               [](const Descriptor& d) {
                 return "group " + std::to_string(d.group_hash) + "/" +
                        std::to_string(d.group_size) + " set " + std::to_string(d.process_set);
               });
}

}  // namespace rf
