#include "ringflow/store/store_protocol.h"

#include <algorithm>

#include "ringflow/common/check.h"
#include "ringflow/net/socket.h"

namespace rf::store_protocol {

void write_u8(int fd, uint8_t value, const Deadline& deadline) {
  net::send_all(fd, &value, 1, deadline, "store");
}
void write_u32(int fd, uint32_t value, const Deadline& deadline) {
  net::send_all(fd, &value, sizeof(value), deadline, "store");
}
void write_i64(int fd, int64_t value, const Deadline& deadline) {
  net::send_all(fd, &value, sizeof(value), deadline, "store");
}
void write_string(int fd, const std::string& value, const Deadline& deadline) {
  write_u32(fd, static_cast<uint32_t>(value.size()), deadline);
  net::send_all(fd, value.data(), value.size(), deadline, "store");
}
uint8_t read_u8(int fd, const Deadline& deadline) {
  uint8_t value = 0;
  net::recv_all(fd, &value, 1, deadline, "store");
  return value;
}
uint32_t read_u32(int fd, const Deadline& deadline) {
  uint32_t value = 0;
  net::recv_all(fd, &value, sizeof(value), deadline, "store");
  return value;
}
int64_t read_i64(int fd, const Deadline& deadline) {
  int64_t value = 0;
  net::recv_all(fd, &value, sizeof(value), deadline, "store");
  return value;
}
std::string read_string(int fd, uint32_t max_len, const Deadline& deadline) {
  uint32_t len = read_u32(fd, deadline);
  RF_CHECK(len <= max_len, kPeerFailure)
      << "store message announces " << len << " bytes, the limit is " << max_len;
  // Grow with what arrives: a client announcing 64 MiB and sending nothing costs nothing.
  constexpr size_t kChunk = 64 * 1024;
  std::string value;
  while (value.size() < len) {
    size_t have = value.size();
    value.resize(have + std::min<size_t>(kChunk, len - have));
    net::recv_all(fd, value.data() + have, value.size() - have, deadline, "store");
  }
  return value;
}

}  // namespace rf::store_protocol
