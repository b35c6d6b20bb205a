// Element types and reduction operations: the one source of truth, exported to Python by the
// bindings so no constant is kept in sync by hand.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rf {

enum class DType : uint8_t {
  kUInt8 = 0,
  kInt8 = 1,
  kInt32 = 2,
  kInt64 = 3,
  kFloat16 = 4,
  kBFloat16 = 5,
  kFloat32 = 6,
  kFloat64 = 7,
  kBool = 8,
  kInt16 = 9,  // after bool: the values are part of the wire format
};
constexpr int kNumDTypes = 10;

enum class ReduceOp : uint8_t {
  kSum = 0,
  kAverage = 1,
  kMin = 2,
  kMax = 3,
  kProduct = 4,
};
constexpr int kNumReduceOps = 5;

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
bool dtype_is_valid(int value);
const char* reduce_op_name(ReduceOp op);

}  // namespace rf
