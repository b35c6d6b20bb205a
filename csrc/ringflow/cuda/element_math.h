// The per-element math of the CUDA kernels, compiled by nvcc for the kernels and by g++ for
// their host reference (reference.cc), so the CPU tests test the kernels' arithmetic. One
// function per rule: fold (combine), scale_element, divide_element, cast_element. No CUDA
// header is included; 16-bit floats convert through reduce/half.h, which the CPU kernels use.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ringflow/common/dtype.h"
#include "ringflow/common/host_device.h"
#include "ringflow/reduce/half.h"

namespace rf::cuda::math {

// Storage types the kernels see; Compute<T> maps each to the type its arithmetic runs in.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
struct Bool {
  uint8_t value;  // any non-zero byte is true; results are 0 or 1, like numpy's bool
};

template <typename T>
struct Compute {
  using type = T;
  RF_HOST_DEVICE static T load(T value) { return value; }
  RF_HOST_DEVICE static T store(T value) { return value; }
};
template <>
struct Compute<Half> {
  using type = float;
  RF_HOST_DEVICE static float load(Half value) { return f16_to_float(value.bits); }
  RF_HOST_DEVICE static Half store(float value) { return Half{float_to_f16(value)}; }
};
template <>
struct Compute<BFloat16> {
  using type = float;
  RF_HOST_DEVICE static float load(BFloat16 value) { return bf16_to_float(value.bits); }
  RF_HOST_DEVICE static BFloat16 store(float value) { return BFloat16{float_to_bf16(value)}; }
};
template <>
struct Compute<Bool> {
  using type = bool;
  RF_HOST_DEVICE static bool load(Bool value) { return value.value != 0; }
  RF_HOST_DEVICE static Bool store(bool value) { return Bool{static_cast<uint8_t>(value)}; }
};

template <typename C>
RF_HOST_DEVICE inline bool sign_bit(C value) {
  if constexpr (sizeof(C) == 4) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return (bits >> 31) != 0;
  } else {
    uint64_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return (bits >> 63) != 0;
  }
}

// The reduction operators, as the CPU kernels in reduce/ define them: integers wrap (computed
// unsigned), Min/Max follow IEEE 754-2019 minimum/maximum (NaN propagates, -0 < +0), bool
// Sum = or and Product = and (numpy's add / multiply on bool). Average folds as Sum.
struct SumOp {
  template <typename C>
  RF_HOST_DEVICE C operator()(C a, C b) const {
    if constexpr (std::is_same_v<C, bool>) {
      return a || b;
    } else if constexpr (std::is_integral_v<C>) {
      using U = std::make_unsigned_t<C>;
      return static_cast<C>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
    } else {
      return a + b;
    }
  }
};
struct ProductOp {
  template <typename C>
  RF_HOST_DEVICE C operator()(C a, C b) const {
    if constexpr (std::is_same_v<C, bool>) {
      return a && b;
    } else if constexpr (std::is_integral_v<C>) {
      // Through unsigned long long so that uint8 * uint8 never overflows a signed int.
      using U = std::make_unsigned_t<C>;
      return static_cast<C>(static_cast<U>(static_cast<unsigned long long>(static_cast<U>(a)) *
                                           static_cast<unsigned long long>(static_cast<U>(b))));
    } else {
      return a * b;
    }
  }
};
struct MinOp {
  template <typename C>
  RF_HOST_DEVICE C operator()(C a, C b) const {
    if constexpr (std::is_floating_point_v<C>) {
      if (a != a) return a;
      if (b != b) return b;
      if (a == b) return sign_bit(a) ? a : b;
    }
    return b < a ? b : a;
  }
};
struct MaxOp {
  template <typename C>
  RF_HOST_DEVICE C operator()(C a, C b) const {
    if constexpr (std::is_floating_point_v<C>) {
      if (a != a) return a;
      if (b != b) return b;
      if (a == b) return sign_bit(a) ? b : a;
    }
    return a < b ? b : a;
  }
};

// An integer type's range, as constants usable in device code (std::numeric_limits' members
// are host functions to nvcc).
template <typename T>
struct IntRange {
  static constexpr bool kSigned = static_cast<T>(-1) < static_cast<T>(0);
  static constexpr T kMin =
      kSigned ? static_cast<T>(static_cast<T>(1) << (sizeof(T) * 8 - 1)) : static_cast<T>(0);
  static constexpr T kMax = static_cast<T>(~kMin);
};

// double -> integer as Horovod 0.28.1 converts a scaled integer (`(T)(double)`): truncated
// toward zero. Out of range saturates and NaN gives 0 (what the GPU's conversion does; the
// C++ cast would be undefined there).
template <typename T>
RF_HOST_DEVICE inline T truncate_to(double value) {
  if (value != value) return 0;
  if (value >= static_cast<double>(IntRange<T>::kMax)) return IntRange<T>::kMax;
  if (value <= static_cast<double>(IntRange<T>::kMin)) return IntRange<T>::kMin;
  return static_cast<T>(value);
}

// x * factor (prescale / postscale). Integers: in float64, truncated (Horovod 0.28.1). Floats:
// in their compute type (float32 for 16-bit floats, rounded once), factor rounded to it first,
// as the CPU scale_by does.
template <typename T>
RF_HOST_DEVICE inline T scale_element(T x, double factor) {
  using C = Compute<T>;
  using V = typename C::type;
  if constexpr (std::is_integral_v<V>) {
    return truncate_to<T>(static_cast<double>(x) * factor);
  } else {
    return C::store(C::load(x) * static_cast<V>(factor));
  }
}

// x / divisor (Average). Integers: Horovod 0.28.1 averages by a postscale of 1.0 / size,
// so x * (1.0 / divisor) in float64, truncated. Floats: divided in their compute type, as the
// CPU divide_by does.
template <typename T>
RF_HOST_DEVICE inline T divide_element(T x, int64_t divisor) {
  using C = Compute<T>;
  using V = typename C::type;
  if constexpr (std::is_integral_v<V>) {
    return truncate_to<T>(static_cast<double>(x) * (1.0 / static_cast<double>(divisor)));
  } else {
    return C::store(C::load(x) / static_cast<V>(divisor));
  }
}

// Source to destination storage type through float32 (round to nearest even, NaN kept quiet).
template <typename D, typename S>
RF_HOST_DEVICE inline D cast_element(S x) {
  return Compute<D>::store(static_cast<typename Compute<D>::type>(Compute<S>::load(x)));
}

// Calls fn(T{}) with T the storage type of dtype; returns false for an unknown dtype.
template <typename Fn>
RF_HOST_DEVICE inline bool with_storage_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kUInt8:
      return fn(uint8_t{}), true;
    case DType::kInt8:
      return fn(int8_t{}), true;
    case DType::kInt16:
      return fn(int16_t{}), true;
    case DType::kInt32:
      return fn(int32_t{}), true;
    case DType::kInt64:
      return fn(int64_t{}), true;
    case DType::kFloat16:
      return fn(Half{}), true;
    case DType::kBFloat16:
      return fn(BFloat16{}), true;
    case DType::kFloat32:
      return fn(float{}), true;
    case DType::kFloat64:
      return fn(double{}), true;
    case DType::kBool:
      return fn(Bool{}), true;
  }
  return false;
}

// Calls fn(Op{}) with the operator of op (Average as Sum).
template <typename Fn>
RF_HOST_DEVICE inline void with_operator(ReduceOp op, Fn&& fn) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:
      return fn(SumOp{});
    case ReduceOp::kProduct:
      return fn(ProductOp{});
    case ReduceOp::kMin:
      return fn(MinOp{});
    case ReduceOp::kMax:
      return fn(MaxOp{});
  }
}

}  // namespace rf::cuda::math
