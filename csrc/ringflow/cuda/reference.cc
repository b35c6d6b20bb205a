// The kernels' host references and the argument checks both share. Always built (with or
// without CUDA): the CPU tests run the kernels' element math through here.
#include <cstring>

#include "ringflow/common/check.h"
#include "ringflow/cuda/element_math.h"
#include "ringflow/cuda/kernels.h"

namespace rf::cuda {

void check_fold(int n, DType dtype) {
  RF_CHECK(n >= 1 && n <= kMaxFoldInputs, kInvalidArgument)
      << "reduce_fold: " << n << " inputs (1 to " << kMaxFoldInputs << " allowed)";
  RF_CHECK(dtype_is_valid(static_cast<int>(dtype)), kInvalidArgument)
      << "reduce_fold: unknown dtype " << static_cast<int>(dtype);
}

void check_scale(DType dtype) {
  RF_CHECK(dtype != DType::kBool && dtype_is_valid(static_cast<int>(dtype)), kInvalidArgument)
      << "scale: not defined for dtype " << dtype_name(dtype);
}

void check_divide(DType dtype, int64_t divisor) {
  RF_CHECK(dtype != DType::kBool && dtype_is_valid(static_cast<int>(dtype)), kInvalidArgument)
      << "divide: not defined for dtype " << dtype_name(dtype);
  RF_CHECK(divisor > 0, kInvalidArgument) << "divide: divisor " << divisor << " is not positive";
}

void check_cast(DType dst_dtype, DType src_dtype) {
  auto narrow = [](DType d) { return d == DType::kFloat16 || d == DType::kBFloat16; };
  const bool ok = dst_dtype == src_dtype ? dtype_is_valid(static_cast<int>(dst_dtype))
                                         : (dst_dtype == DType::kFloat32 && narrow(src_dtype)) ||
                                               (src_dtype == DType::kFloat32 && narrow(dst_dtype));
  RF_CHECK(ok, kInvalidArgument) << "cast: " << dtype_name(src_dtype) << " to "
                                 << dtype_name(dst_dtype)
                                 << " is not supported (float32 <-> float16 / bfloat16)";
}

namespace reference {

void reduce_fold(void* dst, const void* const* srcs, int n, size_t count, DType dtype,
                 ReduceOp op) {
  check_fold(n, dtype);
  math::with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = math::Compute<T>;
    math::with_operator(op, [&](auto combine) {
      T* out = static_cast<T*>(dst);
      for (size_t i = 0; i < count; ++i) {
        auto acc = C::load(static_cast<const T*>(srcs[0])[i]);
        for (int k = 1; k < n; ++k) acc = combine(C::load(static_cast<const T*>(srcs[k])[i]), acc);
        out[i] = C::store(acc);
      }
    });
  });
}

void scale(void* data, size_t count, DType dtype, double factor) {
  check_scale(dtype);
  if (factor == 1.0) return;
  math::with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, math::Bool>) {
      T* typed = static_cast<T*>(data);
      for (size_t i = 0; i < count; ++i) typed[i] = math::scale_element(typed[i], factor);
    }
  });
}

void divide(void* data, size_t count, DType dtype, int64_t divisor) {
  check_divide(dtype, divisor);
  if (divisor == 1) return;
  math::with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, math::Bool>) {
      T* typed = static_cast<T*>(data);
      for (size_t i = 0; i < count; ++i) typed[i] = math::divide_element(typed[i], divisor);
    }
  });
}

void cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t count) {
  check_cast(dst_dtype, src_dtype);
  if (dst_dtype == src_dtype) {
    if (count != 0) std::memcpy(dst, src, count * dtype_size(dst_dtype));
    return;
  }
  auto convert = [&](auto* out, const auto* in) {
    using D = std::remove_pointer_t<decltype(out)>;
    for (size_t i = 0; i < count; ++i) out[i] = math::cast_element<D>(in[i]);
  };
  using math::BFloat16;
  using math::Half;
  if (dst_dtype == DType::kFloat16)
    return convert(static_cast<Half*>(dst), static_cast<const float*>(src));
  if (dst_dtype == DType::kBFloat16)
    return convert(static_cast<BFloat16*>(dst), static_cast<const float*>(src));
  if (src_dtype == DType::kFloat16)
    return convert(static_cast<float*>(dst), static_cast<const Half*>(src));
  convert(static_cast<float*>(dst), static_cast<const BFloat16*>(src));
}

void batched_copy(const CopyRegion* regions, size_t n) {
  for (size_t r = 0; r < n; ++r) {
    if (regions[r].bytes != 0) std::memcpy(regions[r].dst, regions[r].src, regions[r].bytes);
  }
}

}  // namespace reference
}  // namespace rf::cuda
