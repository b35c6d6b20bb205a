// The rendezvous key–value store as the rest of the core sees it. Ranks publish their data
// addresses and host identities here and wait for each other's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringflow/common/deadline.h"

namespace rf {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::string& value) = 0;
  // Waits until the key exists, then returns its value. Throws kTimeout at the deadline.
  virtual std::string get(const std::string& key, const Deadline& deadline) = 0;
  // Adds delta to the integer stored at key (missing = 0) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Waits until every key exists. Throws kTimeout naming the missing keys at the deadline.
  virtual void wait(const std::vector<std::string>& keys, const Deadline& deadline) = 0;
};

}  // namespace rf
