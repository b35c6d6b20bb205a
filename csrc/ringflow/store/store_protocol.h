// Wire format between store clients and the store server, after the handshake.
//
//   request:  u8 command, then fields; reply: u8 status, then fields
//   string:   u32 length (little endian) + bytes; lengths are checked against the limits below
//             before anything is allocated.
#pragma once

#include <cstdint>
#include <string>

#include "ringflow/common/deadline.h"

namespace rf::store_protocol {

enum class Command : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kWait = 4 };
enum class Status : uint8_t { kOk = 0, kTimeout = 1 };

constexpr uint32_t kMaxKeyBytes = 4096;
constexpr uint32_t kMaxValueBytes = 64u << 20;
constexpr uint32_t kMaxKeysPerWait = 1u << 16;

// Blocking helpers on a non-blocking socket, bounded by the deadline.
void write_u8(int fd, uint8_t value, const Deadline& deadline);
void write_u32(int fd, uint32_t value, const Deadline& deadline);
void write_i64(int fd, int64_t value, const Deadline& deadline);
void write_string(int fd, const std::string& value, const Deadline& deadline);
uint8_t read_u8(int fd, const Deadline& deadline);
uint32_t read_u32(int fd, const Deadline& deadline);
int64_t read_i64(int fd, const Deadline& deadline);
// Throws kPeerFailure if the announced length exceeds max_len.
std::string read_string(int fd, uint32_t max_len, const Deadline& deadline);

}  // namespace rf::store_protocol
