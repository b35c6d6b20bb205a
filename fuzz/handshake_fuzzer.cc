// Fuzzes the handshake: this side (rank 0 of job "fuzz-job") runs net::handshake() against a
// peer whose every byte (hello, job id, proof, verdict) is the input. Refusals and rf::Errors
// are expected outcomes; a crash, a sanitizer report or a hang (libFuzzer -timeout) is not.
#include <cstddef>
#include <cstdint>
#include <string>

#include "ringflow/common/error.h"
#include "ringflow/net/handshake.h"
#include "socket_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > rf::fuzz::kMaxInputBytes) return 0;
  rf::fuzz::SocketInput input = rf::fuzz::socket_input(data, size);
  rf::net::Identity me{rf::net::Role::kPeer, 0, 0, "fuzz-job"};
  auto check = [](const rf::net::Identity& peer, std::string* reason) {
    if (peer.rank == 1) return rf::net::Verdict::kAccepted;
    *reason = "not rank 1";
    return rf::net::Verdict::kRefused;
  };
  try {
    rf::net::handshake(input.near.get(), me, rf::net::Role::kPeer, "fuzz-secret", check,
                       rf::Deadline::after_seconds(0.05));
  } catch (const rf::Error&) {
    // Truncated or closed: the connection is dropped.
  }
  return 0;
}
