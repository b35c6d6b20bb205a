#include "ringflow/store/store_requests.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "ringflow/common/check.h"
#include "ringflow/store/store_protocol.h"

namespace rf {

namespace sp = store_protocol;

namespace {

Deadline forever() { return Deadline::after_seconds(1e9); }

void serve_set(int fd, StoreData& data, const Deadline& deadline) {
  std::string key = sp::read_string(fd, sp::kMaxKeyBytes, deadline);
  std::string value = sp::read_string(fd, sp::kMaxValueBytes, deadline);
  {
    std::lock_guard<std::mutex> lock(data.mutex);
    data.values[key] = std::move(value);
  }
  data.changed.notify_all();
  sp::write_u8(fd, static_cast<uint8_t>(sp::Status::kOk), deadline);
}

void serve_add(int fd, StoreData& data, const Deadline& deadline) {
  std::string key = sp::read_string(fd, sp::kMaxKeyBytes, deadline);
  int64_t delta = sp::read_i64(fd, deadline);
  int64_t total = 0;
  {
    std::lock_guard<std::mutex> lock(data.mutex);
    auto found = data.values.find(key);
    if (found != data.values.end()) {
      const std::string& text = found->second;
      size_t used = 0;
      try {
        total = std::stoll(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      RF_CHECK(used == text.size() && !text.empty(), kPeerFailure)
          << "add on key '" << key << "' that holds a non-integer";
    }
    RF_CHECK(!__builtin_add_overflow(total, delta, &total), kPeerFailure)
        << "add on key '" << key << "' overflows a 64-bit integer";
    data.values[key] = std::to_string(total);
  }
  data.changed.notify_all();
  sp::write_u8(fd, static_cast<uint8_t>(sp::Status::kOk), deadline);
  sp::write_i64(fd, total, deadline);
}

// get (one key, replies with its value) and wait (many keys, replies with nothing); both
// answer "timeout" with the missing keys when the client's own deadline passes first.
// Returns false when the store is stopping.
bool serve_wait(int fd, StoreData& data, sp::Command command, const ServeLimits& limits) {
  Deadline deadline = Deadline::after_seconds(limits.io_seconds);
  uint32_t count = 1;
  if (command == sp::Command::kWait) {
    count = sp::read_u32(fd, deadline);
    RF_CHECK(count <= sp::kMaxKeysPerWait, kPeerFailure) << "wait on " << count << " keys";
  }
  std::vector<std::string> keys;
  for (uint32_t i = 0; i < count; ++i) {
    keys.push_back(sp::read_string(fd, sp::kMaxKeyBytes, deadline));
  }
  uint32_t timeout_ms = std::min(sp::read_u32(fd, deadline), limits.max_wait_ms);
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::vector<std::string> missing;
  std::string value;
  {
    std::unique_lock<std::mutex> lock(data.mutex);
    auto find_missing = [&] {
      missing.clear();
      for (const auto& key : keys) {
        if (!data.values.count(key)) missing.push_back(key);
      }
      return missing.empty() || data.stopping;
    };
    data.changed.wait_until(lock, until, find_missing);
    if (data.stopping) return false;
    if (missing.empty() && command == sp::Command::kGet) value = data.values[keys[0]];
  }
  Deadline reply_deadline = Deadline::after_seconds(limits.io_seconds);
  sp::write_u8(fd, static_cast<uint8_t>(missing.empty() ? sp::Status::kOk : sp::Status::kTimeout),
               reply_deadline);
  if (!missing.empty()) {
    sp::write_u32(fd, static_cast<uint32_t>(missing.size()), reply_deadline);
    for (const auto& key : missing) sp::write_string(fd, key, reply_deadline);
  } else if (command == sp::Command::kGet) {
    sp::write_string(fd, value, reply_deadline);
  }
  return true;
}

}  // namespace

void serve_store_requests(int fd, StoreData& data, const ServeLimits& limits) {
  while (true) {
    auto command = static_cast<sp::Command>(sp::read_u8(fd, forever()));
    switch (command) {
      case sp::Command::kSet:
        serve_set(fd, data, Deadline::after_seconds(limits.io_seconds));
        break;
      case sp::Command::kAdd:
        serve_add(fd, data, Deadline::after_seconds(limits.io_seconds));
        break;
      case sp::Command::kGet:
      case sp::Command::kWait:
        if (!serve_wait(fd, data, command, limits)) return;
        break;
      default:
        RF_THROW(kPeerFailure) << "unknown store command " << int(command);
    }
  }
}

}  // namespace rf
