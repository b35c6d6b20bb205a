// Error types of the core. Every error carries what kind of failure it is, so the bindings can
// map it to the matching Python exception, and a message that already names the rank, the peer,
// the operation and the tensor (see RF_CHECK in check.h).
#pragma once

#include <stdexcept>
#include <string>

namespace rf {

enum class ErrorKind {
  kInternal,         // a bug in ringflow
  kInvalidArgument,  // bad input from this process' caller, rejected before any data moves
  kMismatch,         // ranks disagree about an operation (dtype, shape, op, root, size …)
  kTimeout,          // a deadline expired
  kPeerFailure,      // a peer died, closed its connection or sent something malformed
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace rf
