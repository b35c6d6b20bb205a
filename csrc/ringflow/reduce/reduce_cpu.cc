#include <cmath>
#include <limits>
#include <type_traits>

#include "ringflow/common/check.h"
#include "ringflow/reduce/half.h"
#include "ringflow/reduce/reduce.h"

namespace rf {
namespace {

// Storage <-> compute conversions: 16-bit floats compute in float32, everything else natively.
struct F16 {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};

template <typename T>
struct Compute {
  using type = T;
  static T load(T value) { return value; }
  static T store(T value) { return value; }
};
template <>
struct Compute<F16> {
  using type = float;
  static float load(F16 value) { return f16_to_float(value.bits); }
  static F16 store(float value) { return F16{float_to_f16(value)}; }
};
template <>
struct Compute<BF16> {
  using type = float;
  static float load(BF16 value) { return bf16_to_float(value.bits); }
  static BF16 store(float value) { return BF16{float_to_bf16(value)}; }
};

// Min/Max propagate NaN like numpy's minimum/maximum: if either side is NaN, the result is.
template <typename C>
C min_of(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) {
    if (a != a) return a;
    if (b != b) return b;
  }
  return b < a ? b : a;
}
template <typename C>
C max_of(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) {
    if (a != a) return a;
    if (b != b) return b;
  }
  return a < b ? b : a;
}

// Integer sum and product wrap like numpy: compute in the unsigned type (defined behaviour).
template <typename T>
T wrapping_add(T a, T b) {
  using U = std::make_unsigned_t<T>;
  return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
}
template <typename T>
T wrapping_mul(T a, T b) {
  using U = std::make_unsigned_t<T>;
  // Promote through unsigned long long so uint8*uint8 does not overflow a signed int.
  return static_cast<T>(static_cast<U>(static_cast<unsigned long long>(static_cast<U>(a)) *
                                       static_cast<unsigned long long>(static_cast<U>(b))));
}

template <typename T, typename Fn>
void combine(T* acc, const T* src, size_t count, Fn fn) {
  using C = Compute<T>;
  for (size_t i = 0; i < count; ++i) acc[i] = C::store(fn(C::load(acc[i]), C::load(src[i])));
}

template <typename T>
void reduce_typed(T* acc, const T* src, size_t count, ReduceOp op) {
  using Value = typename Compute<T>::type;
  constexpr bool kInteger = std::is_integral_v<Value>;
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:
      if constexpr (kInteger) {
        combine(acc, src, count, [](Value a, Value b) { return wrapping_add(a, b); });
      } else {
        combine(acc, src, count, [](Value a, Value b) { return a + b; });
      }
      return;
    case ReduceOp::kProduct:
      if constexpr (kInteger) {
        combine(acc, src, count, [](Value a, Value b) { return wrapping_mul(a, b); });
      } else {
        combine(acc, src, count, [](Value a, Value b) { return a * b; });
      }
      return;
    case ReduceOp::kMin:
      combine(acc, src, count, [](Value a, Value b) { return min_of(a, b); });
      return;
    case ReduceOp::kMax:
      combine(acc, src, count, [](Value a, Value b) { return max_of(a, b); });
      return;
  }
}

void reduce_bool(uint8_t* acc, const uint8_t* src, size_t count, ReduceOp op) {
  // Any non-zero byte is true; results are normalised to 0/1 like numpy's bool.
  if (op == ReduceOp::kMin) {
    for (size_t i = 0; i < count; ++i) acc[i] = (acc[i] != 0) & (src[i] != 0);
  } else {
    for (size_t i = 0; i < count; ++i) acc[i] = (acc[i] != 0) | (src[i] != 0);
  }
}

// Exact integer division rounded to nearest, ties to even.
template <typename T>
T divide_round_even(T value, int64_t divisor) {
  int64_t v = static_cast<int64_t>(value);
  int64_t quotient = v / divisor;
  int64_t remainder = v % divisor;
  int64_t twice = 2 * (remainder < 0 ? -remainder : remainder);
  if (twice > divisor || (twice == divisor && (quotient & 1) != 0)) quotient += v < 0 ? -1 : 1;
  return static_cast<T>(quotient);
}

template <typename T>
T saturating_round(double value) {
  constexpr double kLow = static_cast<double>(std::numeric_limits<T>::min());
  constexpr double kHigh = static_cast<double>(std::numeric_limits<T>::max());
  double rounded = std::nearbyint(value);
  if (!(rounded > kLow)) return std::numeric_limits<T>::min();  // also maps NaN to min
  if (rounded >= kHigh) return std::numeric_limits<T>::max();
  return static_cast<T>(rounded);
}

template <typename T>
void divide_typed(T* buf, size_t count, int64_t divisor) {
  using C = Compute<T>;
  using Value = typename C::type;
  if constexpr (std::is_integral_v<Value>) {
    for (size_t i = 0; i < count; ++i) buf[i] = divide_round_even(buf[i], divisor);
  } else {
    const Value d = static_cast<Value>(divisor);
    for (size_t i = 0; i < count; ++i) buf[i] = C::store(C::load(buf[i]) / d);
  }
}

template <typename T>
void scale_typed(T* buf, size_t count, double factor) {
  using C = Compute<T>;
  using Value = typename C::type;
  if constexpr (std::is_integral_v<Value>) {
    for (size_t i = 0; i < count; ++i) buf[i] = saturating_round<T>(buf[i] * factor);
  } else {
    const Value f = static_cast<Value>(factor);
    for (size_t i = 0; i < count; ++i) buf[i] = C::store(C::load(buf[i]) * f);
  }
}

// Calls fn(T*) with buf cast to the storage type of dtype (bool excluded).
template <typename Fn>
void dispatch(DType dtype, void* buf, Fn&& fn) {
  switch (dtype) {
    case DType::kUInt8:
      return fn(static_cast<uint8_t*>(buf));
    case DType::kInt8:
      return fn(static_cast<int8_t*>(buf));
    case DType::kInt32:
      return fn(static_cast<int32_t*>(buf));
    case DType::kInt64:
      return fn(static_cast<int64_t*>(buf));
    case DType::kFloat16:
      return fn(static_cast<F16*>(buf));
    case DType::kBFloat16:
      return fn(static_cast<BF16*>(buf));
    case DType::kFloat32:
      return fn(static_cast<float*>(buf));
    case DType::kFloat64:
      return fn(static_cast<double*>(buf));
    case DType::kBool:
      break;
  }
  RF_THROW(kInternal) << "no arithmetic kernel for dtype " << dtype_name(dtype);
}

}  // namespace

bool reduction_supported(DType dtype, ReduceOp op) {
  return dtype != DType::kBool || op == ReduceOp::kMin || op == ReduceOp::kMax;
}

void reduce_into(void* acc, const void* src, size_t count, DType dtype, ReduceOp op) {
  RF_CHECK(reduction_supported(dtype, op), kInvalidArgument)
      << reduce_op_name(op) << " is not supported for dtype " << dtype_name(dtype);
  if (count == 0) return;
  if (dtype == DType::kBool) {
    return reduce_bool(static_cast<uint8_t*>(acc), static_cast<const uint8_t*>(src), count, op);
  }
  dispatch(dtype, acc, [&](auto* typed_acc) {
    using T = std::remove_pointer_t<decltype(typed_acc)>;
    reduce_typed(typed_acc, static_cast<const T*>(src), count, op);
  });
}

void divide_by(void* buf, size_t count, DType dtype, int64_t divisor) {
  RF_CHECK(divisor > 0, kInternal) << "divide_by(" << divisor << ")";
  if (count == 0 || divisor == 1) return;
  dispatch(dtype, buf, [&](auto* typed) { divide_typed(typed, count, divisor); });
}

void scale_by(void* buf, size_t count, DType dtype, double factor) {
  if (count == 0 || factor == 1.0) return;
  dispatch(dtype, buf, [&](auto* typed) { scale_typed(typed, count, factor); });
}

}  // namespace rf
