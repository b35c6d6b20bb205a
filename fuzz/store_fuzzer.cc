// Fuzzes the store's request parser: serve_store_requests() serves one authenticated client
// whose request stream is the input, against a fresh, empty store. Waits are capped at 0 ms and
// replies at 50 ms so that no input can make it sleep; a malformed request ends in rf::Error.
#include <cstddef>
#include <cstdint>

#include "ringflow/common/error.h"
#include "ringflow/store/store_requests.h"
#include "socket_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > rf::fuzz::kMaxInputBytes) return 0;
  rf::fuzz::SocketInput input = rf::fuzz::socket_input(data, size);
  rf::StoreData store;
  rf::ServeLimits limits;
  limits.max_wait_ms = 0;
  limits.io_seconds = 0.05;
  try {
    rf::serve_store_requests(input.near.get(), store, limits);
  } catch (const rf::Error&) {
    // The client closed, stalled or sent something malformed: its connection is dropped.
  }
  return 0;
}
