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
  }
  return "unknown";
}

namespace {

uint64_t fnv1a(const std::string& text) {
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : text) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

std::string shape_text(const Descriptor& d, int first_dim) {
  std::ostringstream text;
  text << "(";
  for (int i = first_dim; i < d.ndim; ++i) text << (i > first_dim ? ", " : "") << d.dims[i];
  if (d.ndim - first_dim == 1) text << ",";
  text << ")";
  return text.str();
}

std::string name_of(const Descriptor& d) {
  return std::string(d.name, strnlen(d.name, kDescriptorNameBytes));
}

// If value(d) differs between ranks, throws a kMismatch listing each rank's value.
void require_same(const std::vector<Descriptor>& all, int rank, const Request& request,
                  const char* field, const std::function<std::string(const Descriptor&)>& value) {
  const std::string first = value(all[0]);
  bool same = true;
  for (const auto& d : all) same = same && value(d) == first;
  if (same) return;
  std::ostringstream message;
  message << "rank " << rank << ": " << op_kind_name(request.kind) << " of tensor '" << request.name
          << "': " << field << " differs between ranks:";
  for (size_t r = 0; r < all.size(); ++r) {
    message << (r ? "," : "") << " rank " << r << " " << value(all[r]);
  }
  RF_THROW(kMismatch) << message.str();
}

}  // namespace

Descriptor describe(const Request& request) {
  Descriptor d;
  std::memset(&d, 0, sizeof(d));
  d.kind = static_cast<uint8_t>(request.kind);
  d.dtype = static_cast<uint8_t>(request.dtype);
  d.op = static_cast<uint8_t>(request.op);
  d.invalid = request.invalid_reason.empty() ? 0 : 1;
  d.inline_payload = request.inline_payload != nullptr && d.invalid == 0 ? 1 : 0;
  d.root = request.root;
  RF_CHECK(request.shape.size() <= kMaxDims, kInvalidArgument)
      << op_kind_name(request.kind) << " of tensor '" << request.name
      << "': " << request.shape.size() << " dimensions, at most " << kMaxDims << " are supported";
  d.ndim = static_cast<int32_t>(request.shape.size());
  for (size_t i = 0; i < request.shape.size(); ++i) d.dims[i] = request.shape[i];
  d.prescale = request.prescale;
  d.postscale = request.postscale;
  d.name_hash = fnv1a(request.name);
  std::strncpy(d.name, request.name.c_str(), kDescriptorNameBytes - 1);
  return d;
}

size_t inline_payload_bytes(const Descriptor& d) {
  if (!d.inline_payload || d.invalid) return 0;
  RF_CHECK(dtype_is_valid(d.dtype) && d.ndim >= 0 && d.ndim <= kMaxDims, kPeerFailure)
      << "received a malformed operation descriptor";
  // Inline payloads are small by construction; refuse anything that could exhaust memory.
  constexpr size_t kLimit = size_t{1} << 30;
  size_t bytes = dtype_size(static_cast<DType>(d.dtype));
  for (int i = 0; i < d.ndim; ++i) {
    RF_CHECK(d.dims[i] >= 0 && static_cast<size_t>(d.dims[i]) <= kLimit, kPeerFailure)
        << "received a malformed operation descriptor";
    bytes *= static_cast<size_t>(d.dims[i]);
    RF_CHECK(bytes <= kLimit, kPeerFailure) << "received an oversized inline payload";
  }
  return bytes;
}

Negotiated exchange_descriptors(const CollectiveContext& ctx, const Request& request) {
  const int size = ctx.size();
  Descriptor own = describe(request);
  GatherBlock mine;
  mine.header.assign(reinterpret_cast<const char*>(&own),
                     reinterpret_cast<const char*>(&own) + sizeof(own));
  mine.payload = static_cast<const char*>(request.inline_payload);
  mine.payload_bytes = inline_payload_bytes(own);
  GatheredBlocks gathered;
  if (size == 1) {
    gathered.headers = mine.header;
    gathered.payloads.emplace_back(mine.payload, mine.payload + mine.payload_bytes);
  } else {
    auto payload_size = [](const char* header) {
      Descriptor d;
      std::memcpy(&d, header, sizeof(d));
      return inline_payload_bytes(d);
    };
    bruck_allgather(ctx, mine, payload_size, &gathered);
  }
  Negotiated result;
  result.descriptors.resize(size);
  std::memcpy(result.descriptors.data(), gathered.headers.data(), size * sizeof(Descriptor));
  result.payloads = std::move(gathered.payloads);
  return result;
}

namespace {

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

void check_agreement(const std::vector<Descriptor>& all, int rank, const Request& request) {
  // The common case, checked without building a single message.
  if (request.invalid_reason.empty() && all_agree(all)) return;
  const int size = static_cast<int>(all.size());
  std::string context = "rank " + std::to_string(rank) + ": " + op_kind_name(request.kind) +
                        " of tensor '" + request.name + "'";
  // Invalid input first: the offending rank explains itself, the others name it.
  RF_CHECK(request.invalid_reason.empty(), kInvalidArgument)
      << context << ": " << request.invalid_reason;
  for (int r = 0; r < size; ++r) {
    RF_CHECK(!all[r].invalid, kMismatch)
        << context << ": rank " << r << " passed invalid input (see rank " << r
        << "'s error); no data was exchanged";
  }
  // The same operation and name on every rank, or they are calling collectives out of order.
  require_same(all, rank, request, "operation", [](const Descriptor& d) {
    return std::string(op_kind_name(static_cast<OpKind>(d.kind))) + " '" + name_of(d) + "'";
  });
  require_same(all, rank, request, "tensor name",
               [](const Descriptor& d) { return std::to_string(d.name_hash); });
  require_same(all, rank, request, "dtype", [](const Descriptor& d) {
    return std::string(dtype_name(static_cast<DType>(d.dtype)));
  });
  const OpKind kind = request.kind;
  if (kind == OpKind::kAllreduce || kind == OpKind::kReducescatter) {
    require_same(all, rank, request, "reduce op", [](const Descriptor& d) {
      return std::string(reduce_op_name(static_cast<ReduceOp>(d.op)));
    });
  }
  if (kind == OpKind::kAllreduce) {
    auto number = [](double value) {
      std::ostringstream text;
      text << value;
      return text.str();
    };
    require_same(all, rank, request, "prescale_factor",
                 [&](const Descriptor& d) { return number(d.prescale); });
    require_same(all, rank, request, "postscale_factor",
                 [&](const Descriptor& d) { return number(d.postscale); });
  }
  if (kind == OpKind::kBroadcast) {
    require_same(all, rank, request, "root rank",
                 [](const Descriptor& d) { return std::to_string(d.root); });
  }
  // allgather and alltoall may differ in the first dimension; everything else must match whole.
  const bool first_dim_free = kind == OpKind::kAllgather || kind == OpKind::kAlltoall;
  if (kind != OpKind::kBarrier) {
    require_same(all, rank, request, first_dim_free ? "shape after the first dimension" : "shape",
                 [&](const Descriptor& d) {
                   if (first_dim_free && d.ndim == 0) return std::string("() (a scalar)");
                   return shape_text(d, first_dim_free ? 1 : 0);
                 });
  }
  if (kind == OpKind::kAllreduce) {
    // Ranks pick the algorithm alone from the size and RINGFLOW_* settings; they must agree.
    require_same(
        all, rank, request,
        "algorithm (check RINGFLOW_ALLREDUCE_ALGORITHM and "
        "RINGFLOW_BRUCK_MAX_BYTES on every rank)",
        [](const Descriptor& d) { return std::string(d.inline_payload ? "bruck" : "ring"); });
  }
}

}  // namespace rf
