// RF_CHECK(cond, kind) << "message"; throws rf::Error of `kind` with the streamed message when
// `cond` is false. RF_CHECK_EQ prints both values, like GLOO_ENFORCE_EQ.
#pragma once

#include <sstream>
#include <string>

#include "ringflow/common/error.h"

namespace rf {

// Collects a message with operator<< and throws when it goes out of scope at the end of the
// full expression. Only ever constructed by the macros below, on the failure path.
class ErrorThrower {
 public:
  explicit ErrorThrower(ErrorKind kind) : kind_(kind) {}
  ErrorThrower(const ErrorThrower&) = delete;
  ErrorThrower& operator=(const ErrorThrower&) = delete;
  [[noreturn]] ~ErrorThrower() noexcept(false) { throw Error(kind_, stream_.str()); }
  template <typename T>
  ErrorThrower& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  ErrorKind kind_;
  std::ostringstream stream_;
};

}  // namespace rf

#define RF_THROW(kind) ::rf::ErrorThrower(::rf::ErrorKind::kind)

#define RF_CHECK(cond, kind) \
  if (cond) {                \
  } else                     \
    RF_THROW(kind)

#define RF_CHECK_EQ(a, b, kind) \
  if ((a) == (b)) {             \
  } else                        \
    RF_THROW(kind) << #a " (" << (a) << ") != " #b " (" << (b) << "): "
