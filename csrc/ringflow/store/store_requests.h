// The store's data and the request loop that serves one authenticated client. Kept apart from
// the server's sockets and threads so that the parser can be fuzzed on any byte stream
// (fuzz/store_fuzzer.cc) and the server stays about connections only.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace rf {

struct StoreData {
  std::mutex mutex;
  std::condition_variable changed;
  bool stopping = false;  // set by the server's close(): waits end at once
  std::map<std::string, std::string> values;
};

struct ServeLimits {
  // A get/wait never waits longer than this, whatever the client asked (the fuzzer sets 0).
  uint32_t max_wait_ms = UINT32_MAX;
  // Reading a request's fields once its command byte arrived, and writing a reply.
  double io_seconds = 30.0;
};

// Serves requests from fd until the client closes (throws rf::Error kPeerFailure), sends
// something malformed (kPeerFailure naming what), stalls mid-request (kTimeout), or the store
// stops (returns). Between requests it waits for the client without a deadline: a rank keeps
// its store connection open, idle, for the whole job.
void serve_store_requests(int fd, StoreData& data, const ServeLimits& limits);

}  // namespace rf
