// float16 (IEEE binary16) and bfloat16 <-> float32 conversions, round to nearest even, NaN kept
// quiet. Portable bit manipulation; the reduction loops call these per element, so they are
// inline and branch-light enough for the compiler to vectorise the float32 side. The CUDA kernels
// (cuda/element_math.h) use the same functions, so device and host round identically.
#pragma once

#include <cstdint>
#include <cstring>

#include "ringflow/common/host_device.h"

namespace rf {

RF_HOST_DEVICE inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

RF_HOST_DEVICE inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

RF_HOST_DEVICE inline float bf16_to_float(uint16_t value) {
  return bits_to_float(static_cast<uint32_t>(value) << 16);
}

RF_HOST_DEVICE inline uint16_t float_to_bf16(float value) {
  uint32_t bits = float_to_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);     // ties to even
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

RF_HOST_DEVICE inline float f16_to_float(uint16_t value) {
  uint32_t sign = static_cast<uint32_t>(value & 0x8000u) << 16;
  uint32_t exponent = (value >> 10) & 0x1fu;
  uint32_t mantissa = value & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf/NaN
  if (exponent == 0) {
    // Zero or subnormal: value = mantissa * 2^-24, exact in float32.
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

RF_HOST_DEVICE inline uint16_t float_to_f16(float value) {
  uint32_t bits = float_to_bits(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs_bits >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs_bits < 0x38800000u) {
    // Result is subnormal or zero: scale so the float32 adder does the rounding (ties to even).
    float magnitude = bits_to_float(abs_bits) * 16777216.0f;  // * 2^24, exact
    // nearbyint under the default rounding mode; magnitude < 1024 so float is exact enough.
    float rounded = magnitude + 8388608.0f - 8388608.0f;  // rounds to integer, ties to even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded));
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
  uint32_t rounding = 0xfffu + ((abs_bits >> 13) & 1u);
  uint32_t rebased = abs_bits - (112u << 23) + rounding;
  return static_cast<uint16_t>(sign | (rebased >> 13));
}

}  // namespace rf
