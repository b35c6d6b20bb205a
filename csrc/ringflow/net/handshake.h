// The handshake every ringflow connection starts with (store and data connections alike):
//
//   both sides:  Hello  = magic, protocol version, role, rank, generation, job id, 32-byte nonce
//   both sides:  Proof  = HMAC-SHA256(secret, own hello fields || peer nonce || own nonce)
//   both sides:  Verdict (1 byte): accepted, or why the connection is refused
//
// Each side proves it knows the job secret without sending it, and the nonces make a recorded
// proof useless on another connection. A refused connection is closed; nothing else happens.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "ringflow/common/deadline.h"

namespace rf::net {

constexpr uint32_t kMagic = 0x52464c57;  // "RFLW"
constexpr uint16_t kProtocolVersion = 1;
constexpr size_t kMaxJobIdBytes = 256;

enum class Role : uint8_t { kStoreClient = 1, kStoreServer = 2, kPeer = 3 };

struct Identity {
  Role role = Role::kPeer;
  int32_t rank = -1;
  uint32_t generation = 0;
  std::string job_id;
};

enum class Verdict : uint8_t {
  kAccepted = 0,
  kBadProof = 1,  // the other side does not know the secret
  kRefused = 2,   // authenticated, but not wanted now (wrong generation, duplicate rank …)
  kBadHello = 3,  // wrong magic, version, job id or role
};

struct HandshakeResult {
  Identity peer;       // what the other side said it is
  Verdict verdict;     // kAccepted only if both sides accepted
  std::string reason;  // for logs and errors when not accepted
};

// Returns kAccepted, or the reason this side refuses `peer` (checked after authentication).
using PeerCheck = std::function<Verdict(const Identity& peer, std::string* reason)>;

// Runs the handshake on a connected socket. Throws rf::Error only for I/O failures and
// timeouts; a refusal by either side is reported in the result.
HandshakeResult handshake(int fd, const Identity& me, Role expected_peer_role,
                          const std::string& secret, const PeerCheck& check,
                          const Deadline& deadline);

}  // namespace rf::net
